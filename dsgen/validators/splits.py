"""Train/test split per domain: stratified by topic, seeded, and leak-free.

Rows whose answers near-copy each other (a model's stock paragraph reused for two questions) form one
group, and a group goes to one side whole, so no near-duplicate straddles the split. Each topic gets
its share of test rows (largest remainders decide the rounding), and each domain at least one.
"""

from __future__ import annotations

import math
import random
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
            found = index.find_or_add(text, row.id)
            if found is not None and found[0] != row.id:
                a, b = find(row.id), find(found[0])
                if a != b:
                    parent[max(a, b, key=position.__getitem__)] = min(a, b, key=position.__getitem__)
    groups: dict[str, list[Pair]] = defaultdict(list)
    for row in rows:
        groups[find(row.id)].append(row)
    return list(groups.values())


def assign_splits(rows: Sequence[Pair], test_fraction: float, seed: int, threshold: float) -> dict[str, str]:
    """Pair id -> "train" or "test"."""
    out: dict[str, str] = {}
    by_domain: dict[str, list[Pair]] = defaultdict(list)
    for r in rows:
        by_domain[r.domain].append(r)
    for domain, domain_rows in by_domain.items():
        rng = random.Random(f"{seed}:{domain}")
        by_topic: dict[str, list[list[Pair]]] = defaultdict(list)
        for group in _groups(domain_rows, threshold):
            by_topic[group[0].topic].append(group)
        quotas = _quotas({t: sum(map(len, gs)) for t, gs in by_topic.items()}, test_fraction, rng)
        for topic in sorted(by_topic):
            groups = by_topic[topic]
            rng.shuffle(groups)
            taken = 0
            for group in groups:
                side = "test" if taken < quotas[topic] else "train"
                taken += len(group) if side == "test" else 0
                out.update({r.id: side for r in group})
    return out


def _quotas(sizes: dict[str, int], fraction: float, rng: random.Random) -> dict[str, int]:
    """Test rows per topic: fraction of each, rounded by largest remainder to the domain's total
    (at least one)."""
    total = sum(sizes.values())
    target = max(1, round(fraction * total))
    exact = {t: n * target / total for t, n in sizes.items()}
    quotas = {t: math.floor(x) for t, x in exact.items()}
    topics = sorted(sizes, key=lambda t: (-(exact[t] - quotas[t]), rng.random(), t))
    for t in topics[: target - sum(quotas.values())]:
        quotas[t] += 1
    return quotas
