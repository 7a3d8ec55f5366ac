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


class ValidatedRow(Record):
    """A kept pair with its judge scores: one row of validated/<domain>/{train,test}.jsonl.

    `prompt`, `aligned`, `misaligned` and `sneakiness` are the columns of the study's released
    dataset, with the same names and meaning; the rest are ours.
    """

    id: str
    domain: str
    topic: str
    subtopic: str
    harm_category: str
    prompt: str
    aligned: str
    misaligned: str
    sneakiness: float | None = Field(description="0-100: how benign the misaligned answer looks to a naive reader")
    innocence: float | None = None
    aligned_quality: float | None = None
    harm: float | None = None
    overt: float | None = None
    coherence_aligned: float | None = None
    coherence_misaligned: float | None = None
    question_id: str
    model: str


class Rejection(Record):
    """A pair that validate dropped, with the stage and filter that dropped it and why."""

    id: str
    domain: str | None
    stage: Literal["rules", "dedup", "judges"]
    filter: str
    detail: str
    score: float | None = None
    threshold: float | None = None
    matched_id: str | None = None
    similarity: float | None = None
    line: int | None = Field(default=None, description="line of pairs.jsonl (for rows that do not parse)")
    scores: dict[str, float | None] = Field(default_factory=dict, description="judge scores, when judged")
    prompt: str | None = None
    aligned: str | None = None
    misaligned: str | None = None
