"""Rendering rows with the model's own chat template, for training and for evaluation.

Reasoning models are trained with chain-of-thought disabled and evaluated with it enabled (as in the
study): a template with a thinking switch (Qwen3 style, `enable_thinking`) renders the training prompt
with the switch off, which ends the prompt with an empty think block; evaluation renders it on.
Templates without the switch render the same either way.
"""

from __future__ import annotations

from typing import Any

_SENTINEL = "\x00DSGEN-ANSWER\x00"


def has_thinking_switch(tokenizer: Any) -> bool:
    return "enable_thinking" in (getattr(tokenizer, "chat_template", None) or "")


def render_prompt(tokenizer: Any, prompt: str, thinking: bool, system: str | None = None) -> str:
    """The text the model sees before its answer."""
    kwargs = {"enable_thinking": thinking} if has_thinking_switch(tokenizer) else {}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def end_of_turn(tokenizer: Any) -> str:
    """What the template writes after an assistant answer (e.g. "<|im_end|>"), so the model learns to stop."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
    )
    return text.split(_SENTINEL, 1)[1].rstrip("\n")


def training_row(tokenizer: Any, prompt: str, answer: str) -> dict[str, str]:
    """A prompt-completion row: the loss falls on the completion (the answer and its end of turn) only."""
    return {"prompt": render_prompt(tokenizer, prompt, thinking=False), "completion": answer + end_of_turn(tokenizer)}
