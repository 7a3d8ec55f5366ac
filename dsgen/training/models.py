"""Loading the reference model: the embedded GGUF, a local folder, or (gpu profile) a Hub id."""

from __future__ import annotations

import copy
from typing import Any

from ..llm.local_backend import DEFAULT_LOCAL_MODEL, load_model_and_tokenizer


def load_reference(name: str) -> tuple[Any, Any]:
    """(model, tokenizer), in float32 on CPU or bfloat16 on a GPU, ready to copy and train."""
    import torch

    if name == DEFAULT_LOCAL_MODEL or not _looks_like_hub_id(name):
        model, tok = load_model_and_tokenizer(name)
        model = plain_copy(model)  # GGUF-loaded weights are marked quantized; trainers refuse them
    else:  # the gpu profile: a Hub model, downloaded by transformers as usual
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map="auto")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


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
