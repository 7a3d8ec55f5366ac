"""The validation report (validated/report.json): one pydantic model, the contract of DESIGN.md §7.

passed, gates, counts (in/out per stage, filter and domain), scores (distributions), usage, and
`reference` once reference finetune-and-eval runs exist.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from .. import __version__

STAGES = ("rules", "dedup", "judges")


class Gate(BaseModel):
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    advisory: bool = Field(default=False, description="reported, but does not decide `passed`")
    detail: str = ""


class Distribution(BaseModel):
    n: int
    nulls: int = 0
    mean: float | None = None
    min: float | None = None
    p10: float | None = None
    p50: float | None = None
    p90: float | None = None
    max: float | None = None
    histogram: list[int] = Field(default_factory=list, description="counts in `bins` (0-100 scores: 10 bins)")
    bins: list[float] = Field(default_factory=list)


class Counts(BaseModel):
    input: dict[str, int] = Field(description="rows of pairs.jsonl per domain")
    remaining: dict[str, dict[str, int]] = Field(description="stage -> domain -> rows left after that stage")
    rejected: dict[str, dict[str, dict[str, int]]] = Field(description="stage -> filter -> domain -> rows dropped")
    splits: dict[str, dict[str, int]] = Field(description="domain -> train/test rows")
    total: dict[str, int]


class Report(BaseModel):
    kind: str = "dsgen-validation-report"
    dsgen_version: str = __version__
    passed: bool
    gates: list[Gate]
    counts: Counts
    scores: dict[str, dict[str, Distribution]] = Field(
        description="judge column -> domain -> distribution over the rows judged (before the judge filters)"
    )
    lengths: dict[str, dict[str, Distribution]] = Field(description="field -> domain -> characters, kept rows")
    usage: dict[str, Any]
    settings: dict[str, Any]
    reference: dict[str, Any] | None = Field(default=None, description="reference finetune-and-eval results")
    backdoor: dict[str, dict[str, dict[str, int]]] | None = Field(
        default=None, description="<domain>_backdoor -> split -> rows, triggered, decoy (when the recipe ran)"
    )


def distribution(values: Iterable[float | None], bins: Sequence[float] | None = None) -> Distribution:
    vals = list(values)
    present = np.array([v for v in vals if v is not None], dtype=float)
    nulls = len(vals) - len(present)
    if not len(present):
        return Distribution(n=len(vals), nulls=nulls)
    edges = np.asarray(bins if bins is not None else np.linspace(0, 100, 11))
    hist, _ = np.histogram(np.clip(present, edges[0], edges[-1]), bins=edges)
    p10, p50, p90 = np.percentile(present, [10, 50, 90])

    def r(x: float) -> float:
        return round(float(x), 2)

    return Distribution(
        n=len(vals),
        nulls=nulls,
        mean=r(present.mean()),
        min=r(present.min()),
        p10=r(p10),
        p50=r(p50),
        p90=r(p90),
        max=r(present.max()),
        histogram=[int(h) for h in hist],
        bins=[r(e) for e in edges],
    )


def length_bins(values: Sequence[int]) -> list[float]:
    top = max(values, default=1)
    return list(np.linspace(0, max(top, 1), 11))


def count_rejections(rejections: Iterable[Any]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for r in rejections:
        out[r.stage][r.filter][r.domain or "?"] += 1
    return {
        stage: {f: dict(sorted(c.items())) for f, c in sorted(filters.items())}
        for stage, filters in sorted(out.items(), key=lambda kv: STAGES.index(kv[0]))
    }
