"""Request and response records of the LLM layer, and the cache key that identifies a request."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatRequest(BaseModel):
    """Everything that shapes an answer. `tag` (the pipeline stage) is for accounting only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    messages: list[dict[str, str]]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    response_format: dict[str, Any] | None = None
    sample: int = 0
    logprobs: bool = False
    top_logprobs: int | None = None
    tag: str = Field(default="", exclude=True)

    def cache_key(self) -> str:
        material = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()


def sampling_seed(cache_key: str, attempt: int) -> int:
    """The seed sent to the model: derived from the request, so results do not depend on call order.

    Each parse attempt gets its own seed, so a retry after a malformed answer asks for a new sample.
    """
    digest = hashlib.sha256(f"{cache_key}:{attempt}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


class ChatResponse(BaseModel):
    text: str
    finish_reason: str | None = None
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Per generated position: the top alternatives as [token, logprob] pairs (when asked for).
    top_logprobs: list[list[tuple[str, float]]] | None = None


class ParseError(Exception):
    """The answer is unusable; `reason` is recorded if retries do not fix it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransientError(Exception):
    """A fault worth retrying (429, 5xx, timeout, connection)."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class PermanentError(Exception):
    """A fault that retrying the same request will not fix (400, 404, 422)."""

    def __init__(self, reason: str, detail: str, fatal: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.fatal = fatal  # e.g. 401: no later call can succeed either
