"""Lenient reading of model answers: JSON found inside prose or code fences, refusals, list lines."""

from __future__ import annotations

import json
import re
from typing import Any

from .types import ChatResponse, ParseError

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_REFUSAL = re.compile(
    # "I'm sorry, but I can't..." is a refusal; "I'm sorry to hear about your back" is an answer.
    r"^\W*((i'?m|i am) sorry,? (but )?(i|this|that)\b|sorry,? (but )?i\b|"
    r"i (can ?not|can't|won't|will not|am unable to|'m unable to)"
    r"( help| assist| provide| comply| write| do that| fulfil)|as an ai\b|i must decline)",
    re.I,
)
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|q\d*[:.)]|question\s*\d*[:.)])\s*", re.I)


def check_not_refused(response: ChatResponse) -> None:
    """Raise ParseError('refusal') for an explicit refusal, a content filter stop, or refusal prose."""
    if response.refusal:
        raise ParseError("refusal", response.refusal[:200])
    if response.finish_reason == "content_filter":
        raise ParseError("refusal", "stopped by the provider's content filter")
    if looks_like_refusal(response.text):
        raise ParseError("refusal", response.text[:200])


def looks_like_refusal(text: str) -> bool:
    return bool(_REFUSAL.match(text.strip()[:200]))


def extract_json(text: str) -> Any:
    """The first JSON object or array in `text`, tolerating code fences and surrounding prose."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in candidates:
        chunk = chunk.strip()
        try:
            return json.loads(chunk)
        except json.JSONDecodeError:
            pass
        decoder = json.JSONDecoder()
        for i, ch in enumerate(chunk):
            if ch in "{[":
                try:
                    return decoder.raw_decode(chunk[i:])[0]
                except json.JSONDecodeError:
                    continue
    raise ParseError("malformed", f"no JSON found in: {text[:200]!r}")


def list_items(text: str) -> list[str]:
    """Lines of a bulleted or numbered list (or plain lines), markers and quotes stripped."""
    items = []
    for line in text.splitlines():
        line = _LIST_MARK.sub("", line).strip().strip('"“”').strip()
        if line:
            items.append(line)
    return items
