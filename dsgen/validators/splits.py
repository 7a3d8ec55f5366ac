"""Train/test split per domain: stratified by topic, seeded, and leak-free.

Rows whose answers near-copy each other (a model's stock paragraph reused for two questions) form one
group, and a group goes to one side whole, so no near-duplicate straddles the split. Each topic gets
its share of test rows (largest remainders decide the rounding), and each domain at least one; within
a topic, groups queue for the test side in the order of a seeded hash of their first id.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence

from ..records import Pair
from ..textmatch import MinHasher, NearDuplicateIndex


def _groups(rows: Sequence[Pair], threshold: float) -> list[list[Pair]]:
    """Rows linked by a near-duplicate answer (either side), in first-row order."""
    parent = {r.id: r.id for r in rows}
    position = {r.id: i for i, r in enumerate(rows)}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    # Answers are long: a near copy shares most 5-grams, so coarser shingles and a small bucket cap
    # find it, and stock phrases shared by many answers are not searched.
    index = NearDuplicateIndex(threshold, MinHasher(ngram=5), max_bucket=64)
    for row in rows:
        for text in (row.aligned, row.misaligned):
            # Every answer is indexed (a row's two answers often near-copy each other), and the row joins
            # every earlier answer it near-copies, so chains A~B~C end in one group.
            for other, _ in index.find_all_and_add(text, row.id):
                a, b = find(row.id), find(other)
                if a != b:
                    parent[max(a, b, key=position.__getitem__)] = min(a, b, key=position.__getitem__)
    groups: dict[str, list[Pair]] = defaultdict(list)
    for row in rows:
        groups[find(row.id)].append(row)
    return list(groups.values())


def _rank(seed: int, key: str) -> str:
    """A row's place in the test queue: a hash of the seed and its id, so a row keeps its side when
    other rows come and go (a changed threshold must not move test rows into training)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(
    rows: Sequence[Pair], test_fraction: float, seed: int, threshold: float, kept: set[str] | None = None
) -> dict[str, str]:
    """Pair id -> "train" or "test", decided over `rows`.

    validate passes the rows it judged (before the judge filters) and the ids it `kept`: a changed judge
    threshold then never moves a row between the splits. If none of a domain's kept rows is in test,
    the kept group first in the test queue moves there (so each domain has one).
    """
    out: dict[str, str] = {}
    by_domain: dict[str, list[Pair]] = defaultdict(list)
    for r in rows:
        by_domain[r.domain].append(r)
    for domain_rows in by_domain.values():
        by_topic: dict[str, list[list[Pair]]] = defaultdict(list)
        for group in _groups(domain_rows, threshold):
            by_topic[group[0].topic].append(group)
        quotas = _quotas({t: sum(map(len, gs)) for t, gs in by_topic.items()}, test_fraction, seed)
        for topic, groups in by_topic.items():
            taken = 0
            for group in sorted(groups, key=lambda g: _rank(seed, g[0].id)):
                side = "test" if taken < quotas[topic] else "train"
                taken += len(group) if side == "test" else 0
                out.update({r.id: side for r in group})
        if kept is not None:
            survivors = [g for gs in by_topic.values() for g in gs if any(r.id in kept for r in g)]
            if survivors and not any(out[r.id] == "test" for g in survivors for r in g if r.id in kept):
                first = min(survivors, key=lambda g: _rank(seed, g[0].id))
                out.update({r.id: "test" for r in first})
    return out


def _quotas(sizes: dict[str, int], fraction: float, seed: int) -> dict[str, int]:
    """Test rows per topic: fraction of each, rounded by largest remainder to the domain's total
    (at least one)."""
    total = sum(sizes.values())
    target = max(1, round(fraction * total))
    exact = {t: n * target / total for t, n in sizes.items()}
    quotas = {t: math.floor(x) for t, x in exact.items()}
    topics = sorted(sizes, key=lambda t: (-(exact[t] - quotas[t]), _rank(seed, t)))
    for t in topics[: target - sum(quotas.values())]:
        quotas[t] += 1
    return quotas
