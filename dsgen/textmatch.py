"""Text normalisation and a near-duplicate index, shared by build (questions) and validate."""

from __future__ import annotations

import re
import unicodedata

from rapidfuzz import fuzz, process

_NON_WORD = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case, accents, punctuation and spacing folded away: what two near-copies share."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _NON_WORD.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


class NearDuplicateIndex:
    """Finds, for each new text, an earlier text that is the same or nearly so (rapidfuzz ratio)."""

    def __init__(self, threshold: float = 90.0):
        self.threshold = threshold
        self._exact: dict[str, str] = {}
        self._texts: list[str] = []
        self._ids: list[str] = []

    def match(self, text: str) -> tuple[str, float] | None:
        """The id of the closest earlier text at or above the threshold, with its similarity (0-100)."""
        norm = normalise(text)
        if norm in self._exact:
            return self._exact[norm], 100.0
        if not self._texts:
            return None
        best = process.extractOne(norm, self._texts, scorer=fuzz.ratio, score_cutoff=self.threshold)
        if best is None:
            return None
        return self._ids[best[2]], round(float(best[1]), 2)

    def add(self, text: str, id_: str) -> None:
        norm = normalise(text)
        self._exact.setdefault(norm, id_)
        self._texts.append(norm)
        self._ids.append(id_)
