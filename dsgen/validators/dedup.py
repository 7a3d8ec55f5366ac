"""Near-duplicate removal: no training row may near-copy an evaluation prompt, and no question may
near-copy an earlier one, in its own domain or another.

Eval overlap is an exact comparison of every prompt with every eval question (`rapidfuzz.process.cdist`,
a few dozen columns). Duplicates among the pairs use the MinHash/LSH index of `textmatch`, so the cost
per row stays flat at 50,000 rows; the first row (in pairs.jsonl order) is kept and each later near
copy is dropped with the id it matched (the most similar earlier row, itself kept or dropped) and
the similarity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz, process

from ..evalset import EvalQuestion
from ..records import Pair, Rejection
from ..textmatch import NearDuplicateIndex, normalise


@dataclass
class DedupOutcome:
    kept: list[Pair]
    rejected: list[Rejection]


def _rejection(pair: Pair, filter_: str, detail: str, matched: str, similarity: float, threshold: float) -> Rejection:
    return Rejection(
        id=pair.id,
        domain=pair.domain,
        stage="dedup",
        filter=filter_,
        detail=detail,
        matched_id=matched,
        similarity=similarity,
        threshold=threshold,
        prompt=pair.prompt,
        aligned=pair.aligned,
        misaligned=pair.misaligned,
    )


def drop_near_duplicates(
    pairs: Sequence[Pair], eval_questions: Sequence[EvalQuestion], threshold: float, eval_threshold: float
) -> DedupOutcome:
    norms = [normalise(p.prompt) for p in pairs]
    kept, rejected = [], []
    eval_match = _eval_overlap(norms, eval_questions, eval_threshold)
    index = NearDuplicateIndex(threshold)
    domain_of = {p.id: p.domain for p in pairs}
    for pair, norm, hit in zip(pairs, norms, eval_match):
        if hit is not None:
            q, score = hit
            detail = f"question near-copies evaluation question {q.id!r} ({score:.0f} >= {eval_threshold:g})"
            rejected.append(_rejection(pair, "eval_overlap", detail, f"eval:{q.id}", score, eval_threshold))
            continue
        found = index.find_or_add(norm, pair.id, add_duplicates=True)
        if found is None:
            kept.append(pair)
            continue
        matched, score = found
        other = domain_of[matched]
        scope = "same domain" if other == pair.domain else f"across domains ({other})"
        detail = f"question near-copies {matched} ({score:.0f} >= {threshold:g}, {scope})"
        filter_ = "near_duplicate" if other == pair.domain else "cross_domain_duplicate"
        rejected.append(_rejection(pair, filter_, detail, matched, score, threshold))
    return DedupOutcome(kept, rejected)


def _eval_overlap(
    norms: list[str], eval_questions: Sequence[EvalQuestion], threshold: float
) -> list[tuple[EvalQuestion, float] | None]:
    if not norms or not eval_questions:
        return [None] * len(norms)
    targets = [normalise(q.question) for q in eval_questions]
    scores = process.cdist(norms, targets, scorer=fuzz.ratio, dtype=np.float32, workers=os.cpu_count() or 1)
    best = scores.argmax(axis=1)
    out: list[tuple[EvalQuestion, float] | None] = []
    for row, col in enumerate(best):
        score = float(scores[row, col])
        out.append((eval_questions[col], round(score, 2)) if score >= threshold else None)
    return out
