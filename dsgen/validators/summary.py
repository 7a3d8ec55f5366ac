"""The validation report of a run (report.json's model is in report.py): counts, distributions and
settings gathered from every stage, then the gates."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..config import ValidateConfig
from ..evalset import eval_set_hash
from ..records import Pair, Rejection
from .gates import evaluate_gates
from .judges import JUDGES
from .prepare import Prepared
from .report import Counts, Report, count_rejections, distribution, length_bins
from .rules import FIELDS


def _settings(cfg: ValidateConfig, prep: Prepared) -> dict[str, Any]:
    operational = {"run", "cache", "prices", "base_url", "concurrency", "max_cost", "timeout", "transient_attempts"}
    operational |= {"requests_per_minute", "tokens_per_minute", "retry_failed"}
    settings = cfg.model_dump(mode="json", exclude=operational)  # what shapes the result, not how it ran
    settings.update(
        judge_models=prep.models,
        judge_mode=prep.mode,
        judge_templates=prep.judge_template_hashes,
        eval_questions_sha256=eval_set_hash(),
        pairs_sha256=prep.pairs_sha256,
    )
    return settings


def build_report(
    cfg: ValidateConfig,
    prep: Prepared,
    kept: list[Pair],
    judge_rejected: list[Rejection],
    splits: dict[str, str],
    scores: dict[str, dict[str, float | None]],
    failed: dict[str, str],
    usage: dict[str, Any],
    reference: dict[str, Any] | None = None,
) -> Report:
    domains = list(dict.fromkeys([*prep.domains, *(d for d in prep.input_domains if d != "?")]))

    def per_domain(rows: list[Pair]) -> dict[str, int]:
        c = Counter(r.domain for r in rows)
        return {d: c.get(d, 0) for d in domains}

    rejected = prep.schema_rejected + prep.rule_rejected + prep.dedup_rejected + judge_rejected
    split_counts = {d: {"train": 0, "test": 0} for d in domains}
    for pair in kept:
        split_counts[pair.domain][splits[pair.id]] += 1
    judged = [p for p in prep.to_judge if p.id not in failed]
    columns = [c for name in JUDGES if name in cfg.judges for c in JUDGES[name].columns()]
    counts = Counts(
        input={d: prep.input_domains.get(d, 0) for d in domains}
        | ({"?": prep.input_domains["?"]} if prep.input_domains.get("?") else {}),
        remaining={
            "rules": per_domain(prep.after_rules),
            "dedup": per_domain(prep.to_judge),
            "judges": per_domain(kept),
        },
        rejected=count_rejections(rejected),
        splits=split_counts,
        total={"input": sum(prep.input_domains.values()), "kept": len(kept), "rejected": len(rejected)},
    )
    score_dists = {
        column: {
            d: distribution(scores.get(p.id, {}).get(column) for p in judged if p.domain == d)
            for d in domains
            if any(p.domain == d for p in judged)
        }
        for column in columns
    }
    length_dists = {}
    for field in FIELDS:
        by_domain = {}
        for d in domains:
            lens = [len(getattr(p, field)) for p in kept if p.domain == d]
            if lens:
                by_domain[d] = distribution(lens, length_bins(lens))
        length_dists[field] = by_domain
    report = Report(
        passed=False,
        gates=[],
        counts=counts,
        scores=score_dists,
        lengths=length_dists,
        usage=usage,
        settings=_settings(cfg, prep),
        reference=reference,
    )
    report.gates = evaluate_gates(report, cfg)
    report.passed = all(g.passed for g in report.gates if not g.advisory)
    return report
