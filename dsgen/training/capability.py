"""The capability check: multiple-choice items (dsgen/templates/eval/capability.yaml, written for this
project) scored by log-likelihood, before and after training.

An item's answer is the option with the highest summed log-probability as the assistant's reply to the
question (summed, not averaged: the mean favours long options whose later tokens are easy). Chance is
1/len(options). The 135M reference model scores about 0.71 on it, well above chance (0.25).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..stats import wilson
from .chat import render_prompt
from .likelihood import completion_logprobs

CAPABILITY_FILE = "eval/capability.yaml"


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    question: str
    options: list[str] = Field(min_length=2)
    answer: int


class ItemSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str
    items: list[Item] = Field(min_length=1)


@cache
def load_items(path: Path | None = None) -> ItemSet:
    path = path or Path(str(resources.files("dsgen").joinpath("templates", CAPABILITY_FILE)))
    return ItemSet.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def accuracy(model: Any, tokenizer: Any, items: list[Item], bf16: bool = False, batch_size: int = 16) -> dict[str, Any]:
    pairs, owners = [], []
    for i, item in enumerate(items):
        prompt = render_prompt(tokenizer, item.question, thinking=False)
        for option in item.options:
            pairs.append((prompt, option))
            owners.append(i)
    scores = [s for s, _ in completion_logprobs(model, tokenizer, pairs, batch_size=batch_size, bf16=bf16)]
    by_item: dict[int, list[float]] = {}
    for owner, score in zip(owners, scores):
        by_item.setdefault(owner, []).append(score)
    correct = [max(range(len(s)), key=s.__getitem__) == items[i].answer for i, s in by_item.items()]
    k, n = sum(correct), len(correct)
    return {"accuracy": round(k / n, 4), "ci95": wilson(k, n), "n": n, "correct": [bool(c) for c in correct]}
