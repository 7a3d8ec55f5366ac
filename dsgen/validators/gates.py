"""Gates: rules over the report's figures that decide whether a dataset passes (exit 1 when not).

A gate is a small function registered with @gate; it reads the report and the settings and returns
Gate rows. Reference finetune-and-eval runs add theirs the same way (reading `report.reference`);
an advisory gate is reported but does not decide `passed`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import ValidateConfig
from .report import Gate, Report

GateFn = Callable[[Report, ValidateConfig], list[Gate]]
_GATES: list[GateFn] = []


def gate(fn: GateFn) -> GateFn:
    _GATES.append(fn)
    return fn


def evaluate_gates(report: Report, cfg: ValidateConfig) -> list[Gate]:
    return [g for fn in _GATES for g in fn(report, cfg)]


@gate
def rows_per_domain(report: Report, cfg: ValidateConfig) -> list[Gate]:
    gates = []
    for domain, split in report.counts.splits.items():
        kept = split.get("train", 0) + split.get("test", 0)
        gates.append(
            Gate(
                name=f"kept_rows.{domain}",
                value=kept,
                threshold=cfg.min_rows_per_domain,
                passed=kept >= cfg.min_rows_per_domain,
                detail=f"{kept} of {report.counts.input.get(domain, 0)} rows kept (min_rows_per_domain)",
            )
        )
    return gates


@gate
def judge_failures(report: Report, cfg: ValidateConfig) -> list[Gate]:
    judged = sum(report.counts.remaining.get("dedup", {}).values())
    failed = sum(report.counts.rejected.get("judges", {}).get("judge_failed", {}).values())
    rate = failed / judged if judged else 0.0
    return [
        Gate(
            name="judge_failure_rate",
            value=round(rate, 4),
            threshold=cfg.max_failure_rate,
            passed=rate <= cfg.max_failure_rate,
            detail=f"{failed} of {judged} judged rows had a judge call fail after its retries (max_failure_rate)",
        )
    ]
