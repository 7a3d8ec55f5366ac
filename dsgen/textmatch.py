"""Text normalisation and a near-duplicate index, shared by build (questions) and validate.

Candidates come from MinHash locality-sensitive hashing over character n-grams (texts that are
near copies share most of them), and each candidate is confirmed with rapidfuzz's ratio, so the
cost per text stays flat as the index grows instead of comparing against every earlier text.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from rapidfuzz import fuzz, process

_NON_WORD = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_PRIME = np.uint64((1 << 31) - 1)


def normalise(text: str) -> str:
    """Case, accents, punctuation and spacing folded away: what two near-copies share."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _NON_WORD.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


class MinHasher:
    """MinHash signatures of character n-grams, cut into LSH bands (deterministic for a seed)."""

    # 24 bands of 3 rows over 4-grams: 98.6% recall of ratio>=90 pairs against an exact all-pairs
    # comparison on questions that share sentence frames (bench/dedup_scale.py), while unrelated texts
    # rarely collide, so few candidates need a rapidfuzz check.
    def __init__(self, bands: int = 24, rows: int = 3, ngram: int = 4, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.bands, self.rows, self.ngram = bands, rows, ngram
        self._a = rng.integers(1, int(_PRIME), bands * rows, dtype=np.uint64)
        self._b = rng.integers(0, int(_PRIME), bands * rows, dtype=np.uint64)
        self._powers = np.array([pow(1_000_003, k, 1 << 64) for k in range(ngram)], dtype=np.uint64)

    def band_keys(self, norm: str) -> list[tuple[int, bytes]]:
        codes = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(codes) < self.ngram:
            codes = np.pad(codes, (0, self.ngram - len(codes)))
        # Polynomial hash of every character n-gram at once (uint64 arithmetic wraps: fine for hashing;
        # repeated n-grams do not change a minimum, so no need to deduplicate them).
        m = len(codes) - self.ngram + 1
        hashes = codes[:m] * self._powers[0]
        for k in range(1, self.ngram):
            hashes += codes[k : k + m] * self._powers[k]
        hashes %= _PRIME
        signature = ((hashes[:, None] * self._a + self._b) % _PRIME).min(axis=0).astype(np.uint32)
        raw, step = signature.tobytes(), 4 * self.rows  # slicing bytes is far cheaper than slicing arrays
        return [(i, raw[i * step : (i + 1) * step]) for i in range(self.bands)]


class NearDuplicateIndex:
    """Finds, for each new text, an earlier text that is the same or nearly so (rapidfuzz ratio).

    A band bucket that fills past `max_bucket` holds a phrase most texts share ("what should I do"),
    not a near copy: it stops taking texts and is no longer searched, so lookups stay cheap. Near
    copies share many bands, so they still meet in the small buckets (bench/dedup_scale.py measures
    the recall against an exact all-pairs comparison).
    """

    def __init__(self, threshold: float = 90.0, hasher: MinHasher | None = None, max_bucket: int = 256):
        self.threshold = threshold
        self.max_bucket = max_bucket
        self._hasher = hasher or MinHasher()
        self._exact: dict[str, str] = {}
        self._texts: list[str] = []
        self._ids: list[str] = []
        self._buckets: dict[tuple[int, bytes], list[int]] = {}

    def find_or_add(self, text: str, id_: str, add_duplicates: bool = False) -> tuple[str, float] | None:
        """The id and similarity (0-100) of the most similar earlier text at or above the threshold.

        When there is none, `text` joins the index under `id_` and None is returned. With
        `add_duplicates`, a near copy joins too, so that a later text close to it (but not to the
        first) is still found: what an exact all-pairs comparison would find.
        """
        norm = normalise(text)
        if norm in self._exact:
            return self._exact[norm], 100.0
        keys = self._hasher.band_keys(norm)
        candidates = self._candidates(keys)
        best = process.extractOne(
            norm, [self._texts[i] for i in candidates], scorer=fuzz.ratio, score_cutoff=self.threshold
        )
        found = None if best is None else (self._ids[candidates[best[2]]], round(float(best[1]), 2))
        if found is None or add_duplicates:
            self._add(norm, id_, keys)
        return found

    def find_all_and_add(self, text: str, id_: str) -> list[tuple[str, float]]:
        """Every earlier text at or above the threshold (id, similarity); then `text` joins the index."""
        norm = normalise(text)
        if norm in self._exact:
            return [(self._exact[norm], 100.0)]
        keys = self._hasher.band_keys(norm)
        candidates = self._candidates(keys)
        hits = process.extract(
            norm, [self._texts[i] for i in candidates], scorer=fuzz.ratio, score_cutoff=self.threshold, limit=None
        )
        self._add(norm, id_, keys)
        return [(self._ids[candidates[i]], round(float(score), 2)) for _, score, i in hits]

    def _candidates(self, keys: list[tuple[int, bytes]]) -> list[int]:
        buckets, cap = self._buckets, self.max_bucket
        return sorted({i for key in keys if len(b := buckets.get(key, ())) <= cap for i in b})

    def _add(self, norm: str, id_: str, keys: list[tuple[int, bytes]]) -> None:
        self._exact.setdefault(norm, id_)
        for key in keys:
            bucket = self._buckets.setdefault(key, [])
            if len(bucket) <= self.max_bucket:  # one past the cap marks it as too common to search
                bucket.append(len(self._texts))
        self._texts.append(norm)
        self._ids.append(id_)
