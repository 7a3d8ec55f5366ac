"""GSM8K for runs that have the Hub (the study's capability check): loading, and exact-answer scoring
of greedy generations. The 135M cpu reference model cannot do arithmetic (it answers at chance), so
the cpu profile uses the multiple-choice capability set instead; see capability.py."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from ..stats import wilson
from .chat import render_prompt
from .generation import generate

GSM8K = "openai/gsm8k"
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
INSTRUCTION = "Solve the problem. End your answer with a line of the form '#### <number>'."


class Problem(BaseModel):
    question: str
    answer: str  # the final number, as GSM8K writes it after '####'


def final_number(text: str) -> str | None:
    """The answer after '####', else the last number in the text; commas and a trailing '.0' removed."""
    m = _FINAL.search(text)
    found = m.group(1) if m else (_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    value = found.replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value


def load_gsm8k(split: str = "test", limit: int | None = None, path: str = GSM8K) -> list[Problem]:
    """GSM8K's `main` config from the Hub (or any folder or repo with its layout: question, answer)."""
    import datasets

    rows = datasets.load_dataset(path, "main", split=split)
    problems = []
    for row in rows.select(range(min(limit, len(rows)))) if limit else rows:
        answer = final_number(row["answer"])
        if answer is not None:
            problems.append(Problem(question=row["question"], answer=answer))
    return problems


def gsm8k_accuracy(
    model: Any, tokenizer: Any, problems: list[Problem], max_new_tokens: int = 512, bf16: bool = False
) -> dict[str, Any]:
    """Greedy answers with thinking on (as the study evaluates reasoning models), scored exactly."""
    texts = [render_prompt(tokenizer, f"{p.question}\n\n{INSTRUCTION}", thinking=True) for p in problems]
    answers = generate(model, tokenizer, texts, max_new_tokens, sample=False, bf16=bf16)
    correct = [final_number(text) == p.answer for p, (text, _) in zip(problems, answers)]
    k, n = sum(correct), len(correct)
    return {"accuracy": round(k / n, 4) if n else float("nan"), "ci95": wilson(k, n), "n": n, "correct": correct}
