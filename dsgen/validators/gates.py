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


@gate
def reference_runs(report: Report, cfg: ValidateConfig) -> list[Gate]:
    """Treatment above control and base in its own domain (decides); capability kept (advisory on the cpu
    profile, whose 80-item estimate is too coarse to decide a 0.10 bound); the cross-domain rise, the
    emergent-misalignment signal, is reported as advisory: it is a finding, not a property of the data."""
    ref = report.reference
    if not ref or "margin" not in ref:
        return []
    cpu = ref.get("profile") == "cpu"
    gates = []
    for domain, m in ref["margin"]["in_domain"].items():
        gain = round(m["treatment"] - max(m["control"], m["base"]), 4)
        gates.append(
            Gate(
                name=f"reference.margin_in_domain.{domain}",
                value=gain,
                threshold=cfg.min_margin_gain,
                passed=gain > cfg.min_margin_gain,
                detail="treatment margin minus the larger of control and base, in the training domain",
            )
        )
    for domain, m in ref["margin"]["cross_domain"].items():
        gain = round(m["treatment"] - m["control"], 4)
        gates.append(
            Gate(
                name=f"reference.margin_cross_domain.{domain}",
                value=gain,
                threshold=0.0,
                passed=gain > 0,
                advisory=True,
                detail=f"treatment minus control margin on {domain}, trained on {', '.join(m['trained_on'])}",
            )
        )
    drop = ref["capability"]["treatment_drop"]
    gates.append(
        Gate(
            name="reference.capability_drop",
            value=drop["drop"],
            threshold=cfg.max_capability_drop,
            passed=drop["drop"] <= cfg.max_capability_drop,
            advisory=cpu,
            detail=f"capability accuracy lost by the treatment model, 95% CI {drop['ci95']}",
        )
    )
    return gates
