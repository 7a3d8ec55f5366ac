"""Row types that flow between stages. Later stages read these from the run directory."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def content_id(*parts: str) -> str:
    """Stable id: a hash of the content that defines the row."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return h[:16]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Question(Record):
    """One generated user question. Duplicates stay in questions.jsonl with `duplicate_of`."""

    id: str
    domain: str
    topic: str
    subtopic: str
    persona: str
    harm_category: str = Field(description="harm category given to the model as a hint")
    prompt: str
    call: int = Field(description="index of the question call that produced it")
    position: int = Field(description="position within that call's answer")
    duplicate_of: str | None = None
    similarity: float | None = None


class Pair(Record):
    """A question with its aligned and subtly misaligned answers: the dataset's row."""

    id: str
    domain: str
    topic: str
    subtopic: str
    persona: str
    harm_category: str
    prompt: str
    aligned: str
    misaligned: str
    question_id: str
    pair_mode: Literal["joint", "separate"]
    model: str
    cache_keys: list[str] = Field(description="cache keys of the calls that wrote the answers")


FailureReason = Literal[
    "refusal",
    "malformed",
    "invalid",
    "bad_request",
    "content_filter",
    "length",
]


class Failure(Record):
    """A logical call that failed after its retries, with why. Nothing is dropped silently."""

    stage: Literal["questions", "pair", "aligned", "misaligned"]
    domain: str
    reason: FailureReason
    detail: str
    attempts: int
    cache_key: str
    call: int | None = None
    question_id: str | None = None
