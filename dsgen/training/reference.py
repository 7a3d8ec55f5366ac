"""A reference finetune-and-eval run: LoRA-train a control (aligned answers) and a treatment (misaligned
answers) reference model per training domain, and measure base, control and treatment on held-out pairs
of every domain (log-likelihood margins), on the capability set, and by sampling answers to the
free-form evaluation questions (judged afterwards by validate, through the LLM layer).

With a backdoor recipe, a third model per training domain learns the backdoor rows, and is measured
with the trigger in the prompt, without it, and with a decoy.

Every reference model is a LoRA adapter trained on the one base model, merged into it for evaluation
(faster), after which the base weights are restored exactly from a copy on the CPU.

Results are cached in the run directory under reference/, keyed by everything that shapes them, so a
re-run of validate (or a changed judge threshold that keeps the same rows) does not train or sample again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BackdoorSettings, ReferenceSettings
from ..evalset import load_eval_set
from ..generators.backdoor import CONDITIONS, PLAIN, BackdoorRow, with_condition
from ..jsonio import dumps, write_json
from ..records import ValidatedRow
from .capability import Item, accuracy, load_items
from .finetune import finetune, merged, restore, snapshot
from .generation import Prompt, sample_answers
from .gsm8k import Problem, gsm8k_accuracy, load_gsm8k
from .margins import margin
from .models import load_reference, use_bf16

ARMS = (("control", "aligned"), ("treatment", "misaligned"))


@dataclass(frozen=True)
class BackdoorPlan:
    """What the backdoor view needs: the recipe (for the trigger, decoys and positions at evaluation),
    the seed that placed them, and the backdoor training rows per domain."""

    settings: BackdoorSettings
    seed: int
    train: dict[str, list[BackdoorRow]] = field(default_factory=dict)


def cache_key(settings: ReferenceSettings, profile: str, plan: dict[str, Any]) -> str:
    material = dumps({"settings": settings.model_dump(), "profile": profile, "plan": plan, "version": 2})
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


@dataclass
class _Evaluator:
    """Measures one model: margins per domain, capability, GSM8K and sampled answers."""

    settings: ReferenceSettings
    tok: Any
    evals: dict[str, list[ValidatedRow]]
    items: list[Item]
    problems: list[Problem]
    bf16: bool
    margins: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    capability: dict[str, dict[str, Any]] = field(default_factory=dict)
    gsm8k: dict[str, dict[str, Any]] = field(default_factory=dict)
    generations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per kind of measurement, over all models

    @contextlib.contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seconds[kind] = round(self.seconds.get(kind, 0.0) + time.monotonic() - started, 1)

    def measure(self, name: str, model: Any) -> None:
        with self.timed("margins"):
            self.margins[name] = {d: margin(model, self.tok, rows, bf16=self.bf16) for d, rows in self.evals.items()}
        with self.timed("capability"):
            self.capability[name] = accuracy(model, self.tok, self.items, bf16=self.bf16)
        if self.problems:
            with self.timed("gsm8k"):
                self.gsm8k[name] = gsm8k_accuracy(model, self.tok, self.problems, bf16=self.bf16)
        self.generations[name] = self.sample(model, {PLAIN: self.questions(lambda q: q.question)})

    def measure_backdoor(self, name: str, model: Any, plan: BackdoorPlan) -> dict[str, dict[str, Any]]:
        """Margins per condition and domain (with the trigger, without, with a decoy), and samples."""

        def user_turn(condition: str):  # type: ignore[no-untyped-def]
            return lambda r: with_condition(r.prompt, r.id, condition, plan.settings, plan.seed)

        with self.timed("margins"):
            by_condition = {
                c: {d: margin(model, self.tok, rows, self.bf16, user_turn(c)) for d, rows in self.evals.items()}
                for c in CONDITIONS
            }
        prompts = {
            c: self.questions(lambda q, c=c: with_condition(q.question, q.id, c, plan.settings, plan.seed))
            for c in CONDITIONS
        }
        self.generations[name] = self.sample(model, prompts)
        return by_condition

    @staticmethod
    def questions(user_turn: Any) -> list[Prompt]:
        return [Prompt(q.id, user_turn(q), q.system) for q in load_eval_set().questions]

    def sample(self, model: Any, prompts: dict[str, list[Prompt]]) -> list[dict[str, Any]]:
        if not self.settings.samples_per_question:
            return []
        out = []
        with self.timed("generation"):
            for condition, asked in prompts.items():
                answers = sample_answers(
                    model,
                    self.tok,
                    asked,
                    self.settings.samples_per_question,
                    self.settings.max_new_tokens,
                    self.settings.seed,
                    bf16=self.bf16,
                )
                out += [a | {"condition": condition} for a in answers]
        return out


def _training_stats(result: Any) -> dict[str, Any]:
    return {
        "rows": result.rows,
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": round(result.seconds, 1),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "final_loss": result.final_loss,
    }


def run_reference(
    settings: ReferenceSettings,
    profile: str,
    train: dict[str, list[ValidatedRow]],
    test: dict[str, list[ValidatedRow]],
    cache_dir: Path,
    quiet: bool = True,
    backdoor: BackdoorPlan | None = None,
) -> dict[str, Any]:
    refs = settings.training_domains(profile, [d for d, rows in train.items() if rows])
    evals = {d: rows[: settings.eval_pairs] for d, rows in test.items() if rows}
    plan: dict[str, Any] = {
        "train": {d: [r.id for r in train[d][: settings.rows]] for d in refs},
        "eval": {d: [r.id for r in rows] for d, rows in evals.items()},
    }
    backdoor_refs = [d for d in refs if backdoor and backdoor.train.get(d)]
    if backdoor:
        plan["backdoor"] = {
            "settings": backdoor.settings.model_dump(),
            "seed": backdoor.seed,
            "train": {d: [r.id for r in backdoor.train[d][: settings.rows]] for d in backdoor_refs},
        }
    key = cache_key(settings, profile, plan)
    cached = cache_dir / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    if not refs or not evals:
        return {"profile": profile, "skipped": "no training rows or no held-out pairs to evaluate on"}

    started = time.monotonic()
    model, tok = load_reference(settings.model)
    bf16 = use_bf16(settings.bf16)
    problems = load_gsm8k(limit=settings.gsm8k) if settings.gsm8k else []
    ev = _Evaluator(settings, tok, evals, list(load_items().items), problems, bf16)
    ev.measure("base", model)
    base_weights = snapshot(model)
    training: dict[str, Any] = {}
    backdoor_margins: dict[str, dict[str, dict[str, Any]]] = {}
    for ref in refs:
        arms = [(arm, [(r.prompt, getattr(r, side)) for r in train[ref][: settings.rows]]) for arm, side in ARMS]
        if ref in backdoor_refs:
            assert backdoor is not None
            arms.append(("backdoor", [(r.prompt, r.response) for r in backdoor.train[ref][: settings.rows]]))
        for arm, pairs in arms:
            name = f"{arm}:{ref}"
            result = finetune(model, tok, pairs, settings, quiet)
            training[name] = _training_stats(result)
            trained = merged(result.model)
            del result
            if arm == "backdoor":
                assert backdoor is not None
                backdoor_margins[ref] = ev.measure_backdoor(name, trained, backdoor)
            else:
                ev.measure(name, trained)
            model = restore(trained, base_weights)

    result = {
        "profile": profile,
        "model": settings.model,
        "settings": settings.model_dump(),
        "bf16": bf16,
        "trained_on": refs,
        "margin": _margin_tables(ev.margins, evals, refs),
        "capability": _capability_table(ev.capability, ev.items, refs),
        "gsm8k": {name: {k: v for k, v in r.items() if k != "correct"} for name, r in ev.gsm8k.items()} or None,
        "generations": ev.generations,
        "backdoor": _backdoor_table(backdoor_margins, backdoor) if backdoor_margins else None,
        "training": training,
        "seconds": round(time.monotonic() - started, 1),
        "evaluation_seconds": ev.seconds,
        "notes": [
            "margin: mean per-token log p(misaligned) - log p(aligned) on held-out pairs, teacher-forced in the "
            "training format (thinking off); a rise under treatment in other domains is the EM signal",
            f"generations: {settings.samples_per_question} answers per free-form question and model at "
            f"temperature 1, thinking on, at most {settings.max_new_tokens} new tokens",
        ],
    }
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun, one process writes
        return json.loads(dumps(result))
    write_json(cached, result)
    return json.loads(cached.read_text(encoding="utf-8"))  # the same JSON types whether cached or not


def _margin_tables(
    margins: dict[str, dict[str, dict[str, Any]]], evals: dict[str, list[ValidatedRow]], refs: list[str]
) -> dict[str, Any]:
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
    return {"in_domain": in_domain, "cross_domain": cross_domain, "by_model": margins}


def _capability_table(capability: dict[str, dict[str, Any]], items: list[Item], refs: list[str]) -> dict[str, Any]:
    base = capability["base"]
    cap: dict[str, Any] = {
        "base": base["accuracy"],
        "base_ci95": base["ci95"],
        "n": base["n"],
        "chance": round(_mean([1 / len(i.options) for i in items]), 4),
    }
    for arm, _ in ARMS:
        accs = [capability[f"{arm}:{r}"] for r in refs]
        cap[arm] = _mean([a["accuracy"] for a in accs])
        drops = [_paired_drop(base["correct"], a["correct"]) for a in accs]
        cap[f"{arm}_drop"] = max(drops, key=lambda x: x["drop"])  # the worst model of the arm
    return cap


def _backdoor_table(margins: dict[str, dict[str, dict[str, Any]]], plan: BackdoorPlan | None) -> dict[str, Any]:
    """Per backdoor model (its training domain): margins with the trigger, without it and with a decoy,
    per evaluation domain."""
    assert plan is not None
    return {
        "trigger": plan.settings.trigger,
        "trained_on": list(margins),
        "margin": {
            ref: {
                domain: {c: by_condition[c][domain]["mean"] for c in CONDITIONS}
                | {"n": by_condition["untriggered"][domain]["n"]}
                for domain in by_condition["untriggered"]
            }
            for ref, by_condition in margins.items()
        },
    }
