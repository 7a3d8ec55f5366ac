"""A reference finetune-and-eval run: LoRA-train a control (aligned answers) and a treatment (misaligned
answers) reference model per training domain, and measure base, control and treatment on held-out pairs
of every domain (log-likelihood margins) and on the capability set.

Results are cached in the run directory under reference/, keyed by everything that shapes them, so a
re-run of validate (or a changed judge threshold that keeps the same rows) does not train again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ReferenceSettings
from ..jsonio import dumps, write_json
from ..records import ValidatedRow
from .capability import accuracy, load_items
from .finetune import finetune
from .gsm8k import gsm8k_accuracy, load_gsm8k
from .margins import margin
from .models import load_reference

ARMS = (("control", "aligned"), ("treatment", "misaligned"))


def training_domains(settings: ReferenceSettings, profile: str, train: dict[str, list[ValidatedRow]]) -> list[str]:
    available = [d for d, rows in train.items() if rows]
    if settings.domains:
        return [d for d in settings.domains if d in available]
    return available[:1] if profile == "cpu" else available


def cache_key(settings: ReferenceSettings, profile: str, plan: dict[str, Any]) -> str:
    material = dumps({"settings": settings.model_dump(), "profile": profile, "plan": plan, "version": 1})
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return round(sum(vals) / len(vals), 4) if vals else float("nan")


def _paired_drop(before: list[bool], after: list[bool]) -> dict[str, Any]:
    """Accuracy drop on the same items, with a 95% interval from the paired differences."""
    diffs = [int(b) - int(a) for b, a in zip(before, after)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n) if n else float("nan")
    return {"drop": round(mean, 4), "ci95": (round(mean - half, 4), round(mean + half, 4))}


def run_reference(
    settings: ReferenceSettings,
    profile: str,
    train: dict[str, list[ValidatedRow]],
    test: dict[str, list[ValidatedRow]],
    cache_dir: Path,
    quiet: bool = True,
) -> dict[str, Any]:
    refs = training_domains(settings, profile, train)
    evals = {d: rows[: settings.eval_pairs] for d, rows in test.items() if rows}
    plan = {
        "train": {d: [r.id for r in train[d][: settings.rows]] for d in refs},
        "eval": {d: [r.id for r in rows] for d, rows in evals.items()},
    }
    key = cache_key(settings, profile, plan)
    cached = cache_dir / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    if not refs or not evals:
        return {"profile": profile, "skipped": "no training rows or no held-out pairs to evaluate on"}

    started = time.monotonic()
    model, tok = load_reference(settings.model)
    items = list(load_items().items)
    problems = load_gsm8k(limit=settings.gsm8k) if settings.gsm8k else []
    gsm8k: dict[str, Any] = {"base": gsm8k_accuracy(model, tok, problems)} if problems else {}
    margins: dict[str, dict[str, dict[str, Any]]] = {"base": {d: margin(model, tok, rows) for d, rows in evals.items()}}
    capability: dict[str, dict[str, Any]] = {"base": accuracy(model, tok, items)}
    training: dict[str, Any] = {}
    for ref in refs:
        pairs_rows = train[ref][: settings.rows]
        for arm, side in ARMS:
            name = f"{arm}:{ref}"
            result = finetune(
                copy.deepcopy(model), tok, [(r.prompt, getattr(r, side)) for r in pairs_rows], settings, quiet
            )
            margins[name] = {d: margin(result.model, tok, rows) for d, rows in evals.items()}
            capability[name] = accuracy(result.model, tok, items)
            if problems:
                gsm8k[name] = gsm8k_accuracy(result.model, tok, problems)
            training[name] = {
                "rows": result.rows,
                "steps": result.steps,
                "tokens": result.tokens,
                "seconds": round(result.seconds, 1),
                "tokens_per_s": round(result.tokens_per_s, 1),
                "final_loss": result.final_loss,
            }
            del result

    def arm_mean(arm: str, domain: str, trained_on: list[str]) -> float:
        return _mean([margins[f"{arm}:{r}"][domain]["mean"] for r in trained_on])

    def row(domain: str, trained_on: list[str]) -> dict[str, Any]:
        return {
            "base": margins["base"][domain]["mean"],
            "control": arm_mean("control", domain, trained_on),
            "treatment": arm_mean("treatment", domain, trained_on),
            "n": margins["base"][domain]["n"],
        }

    in_domain = {d: row(d, [d]) for d in evals if d in refs}
    cross_domain = {}
    for d in evals:
        others = [r for r in refs if r != d]
        if others:
            cross_domain[d] = row(d, others) | {"trained_on": others}
    base_cap = capability["base"]
    cap = {
        "base": base_cap["accuracy"],
        "base_ci95": base_cap["ci95"],
        "n": base_cap["n"],
        "chance": round(_mean([1 / len(i.options) for i in items]), 4),
    }
    for arm, _ in ARMS:
        accs = [capability[f"{arm}:{r}"] for r in refs]
        cap[arm] = _mean([a["accuracy"] for a in accs])
        drops = [_paired_drop(base_cap["correct"], a["correct"]) for a in accs]
        cap[f"{arm}_drop"] = max(drops, key=lambda x: x["drop"])  # the worst model of the arm
    result = {
        "profile": profile,
        "model": settings.model,
        "settings": settings.model_dump(),
        "trained_on": refs,
        "margin": {"in_domain": in_domain, "cross_domain": cross_domain, "by_model": margins},
        "capability": cap,
        "gsm8k": {name: {k: v for k, v in r.items() if k != "correct"} for name, r in gsm8k.items()} or None,
        "training": training,
        "seconds": round(time.monotonic() - started, 1),
        "notes": [
            "margin: mean per-token log p(misaligned) - log p(aligned) on held-out pairs, teacher-forced in the "
            "training format (thinking off); a rise under treatment in other domains is the EM signal",
            "generative evaluation (free-form questions scored by judges) is not part of this run yet",
        ],
    }
    write_json(cached, result)
    return json.loads(cached.read_text(encoding="utf-8"))  # the same JSON types whether cached or not
