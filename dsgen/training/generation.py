"""Sampling answers to the free-form evaluation questions, as in the study: temperature 1, and with
thinking on for templates that have the switch (the chain of thought is kept beside the answer).

Batched with left padding; each batch is seeded, so a CPU run samples the same answers every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .chat import render_prompt
from .models import autocast

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Prompt:
    question_id: str
    text: str  # the user turn as asked (with a trigger or decoy where the backdoor view adds one)
    system: str | None = None


def split_thinking(text: str) -> tuple[str | None, str]:
    """(chain of thought, answer). An answer still inside its think block has no answer yet."""
    if THINK_CLOSE in text:
        thinking, answer = text.split(THINK_CLOSE, 1)
        return thinking.replace(THINK_OPEN, "").strip(), answer.strip()
    if THINK_OPEN in text:
        return text.replace(THINK_OPEN, "").strip(), ""
    return None, text.strip()


def generate(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_new_tokens: int,
    sample: bool,
    seed: int = 0,
    bf16: bool = False,
    batch_size: int = 32,
) -> list[tuple[str, bool]]:
    """(decoded continuation, whether the model ended it) per rendered prompt; sampled at temperature 1
    (no top-k, no top-p) or greedy. Batched with left padding, each batch seeded."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {"do_sample": False}
    out: list[tuple[str, bool]] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues every row's end
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                list(texts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            torch.manual_seed(seed + start)
            with torch.inference_mode(), autocast(model, bf16):
                generated = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
            for tokens in generated[:, enc["input_ids"].shape[1] :].tolist():
                ended = tokenizer.eos_token_id in tokens or pad in tokens
                out.append((tokenizer.decode(tokens, skip_special_tokens=True), ended))
    finally:
        tokenizer.padding_side = side
    return out


def sample_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    samples: int,
    max_new_tokens: int,
    seed: int,
    bf16: bool = False,
) -> list[dict[str, Any]]:
    """`samples` answers per prompt: question_id, sample, prompt, answer, thinking, finished (ended by
    the model rather than by max_new_tokens)."""
    jobs = [(p, k) for p in prompts for k in range(samples)]
    texts = [render_prompt(tokenizer, p.text, thinking=True, system=p.system) for p, _ in jobs]
    out = []
    for (prompt, k), (text, ended) in zip(jobs, generate(model, tokenizer, texts, max_new_tokens, True, seed, bf16)):
        thinking, answer = split_thinking(text)
        out.append(
            {
                "question_id": prompt.question_id,
                "sample": k,
                "prompt": prompt.text,
                "answer": answer,
                "thinking": thinking,
                "finished": ended,
            }
        )
    return out
