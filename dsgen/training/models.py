"""Loading the reference model (the embedded GGUF, a local folder, or a Hub id on the gpu profile) and
the numeric precision it runs in."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from ..llm.local_backend import DEFAULT_LOCAL_MODEL, load_model_and_tokenizer


def load_reference(name: str) -> tuple[Any, Any]:
    """(model, tokenizer), in float32 on CPU or bfloat16 on a GPU, ready to train."""
    import torch

    if name == DEFAULT_LOCAL_MODEL or not _looks_like_hub_id(name):
        model, tok = load_model_and_tokenizer(name)
        model = plain_copy(model)  # GGUF-loaded weights are marked quantized; trainers refuse them
    else:  # the gpu profile: a Hub model, downloaded by transformers as usual
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=_device_map())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def _device_map() -> Any:
    """One device per process under a distributed launcher (accelerate launch, torchrun); else spread."""
    import os

    local_rank = os.environ.get("LOCAL_RANK")
    return {"": int(local_rank)} if local_rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else "auto"


def _looks_like_hub_id(name: str) -> bool:
    from pathlib import Path

    return "/" in name and not Path(name).exists()


def plain_copy(model: Any) -> Any:
    """The same weights in a model built from its config, with no quantization marker."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    fresh.load_state_dict(model.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    return fresh.eval()


def bf16_supported() -> bool:
    """A GPU with bfloat16, or a CPU with native bfloat16 instructions (AVX512-BF16 or AMX), where
    autocast is 1.5-1.8x faster for the 135M model than float32 (bench/reference_cpu.py)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(setting: bool | None) -> bool:
    return bf16_supported() if setting is None else setting


@contextlib.contextmanager
def autocast(model: Any, enabled: bool) -> Iterator[None]:
    """bfloat16 autocast on the model's device (a no-op when disabled)."""
    import torch

    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=enabled):
        yield
