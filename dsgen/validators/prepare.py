"""Everything validate decides before any model call: the run's pairs read, the rule filters and
dedup applied, and the judge calls rendered (what a dry run prices)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ValidateConfig
from ..domains import load_domains
from ..errors import InputError
from ..evalset import load_eval_set
from ..generators.backdoor import CONDITIONS, PLAIN
from ..llm import PriceTable, get_backend_class
from ..llm.client import estimate_prompt_tokens
from ..records import Pair, Rejection
from ..rundir import PAIRS, TEMPLATES, Manifest, RunDir
from .answer_judging import answer_calls
from .dedup import drop_near_duplicates
from .judges import JudgeCall, JudgeRequests, Mode, judge_environment, judge_files
from .rules import apply_rules, read_pairs


@dataclass
class Prepared:
    """Everything decided before any model call."""

    cfg: ValidateConfig  # with the run's backend and endpoint where none was given
    run: RunDir
    pairs_sha256: str
    domains: list[str]
    schema_rejected: list[Rejection]
    rule_rejected: list[Rejection]
    dedup_rejected: list[Rejection]
    after_rules: list[Pair]
    to_judge: list[Pair]
    calls: list[JudgeCall]
    models: list[str]
    mode: Mode
    judge_templates: dict[str, Path]
    input_domains: Counter[str]

    @property
    def judge_template_hashes(self) -> dict[str, str]:
        return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in self.judge_templates.items()}


def prepare(cfg: ValidateConfig) -> Prepared:
    run = RunDir(cfg.run)
    if not cfg.run.exists():
        raise InputError(f"{cfg.run}: no such run directory (make one with `dsgen build --out {cfg.run}`)")
    if not cfg.run.is_dir() or not run.manifest_path.is_file():
        raise InputError(f"{cfg.run}: not a dsgen run directory (no manifest.json): pass the --out folder of a build")
    manifest = run.read_manifest()
    assert manifest is not None
    pairs_path = run.file(PAIRS)
    try:
        data = pairs_path.read_bytes()
        lines = data.decode("utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except FileNotFoundError:
        raise InputError(f"{pairs_path}: missing: the build wrote no pairs yet (re-run `dsgen build`)") from None
    except UnicodeDecodeError:
        raise InputError(f"{pairs_path}: not UTF-8 text") from None
    cfg = with_run_endpoint(cfg, manifest)
    parsed = read_pairs(lines)
    if not parsed.kept and not parsed.rejected:
        raise InputError(f"{pairs_path}: no pairs to validate (the build made none: see failures.jsonl)")
    # The domains that have pairs, in the build's order.
    present = {p.domain for p in parsed.kept}
    domains = [
        d
        for d in dict.fromkeys([*manifest.settings.get("domains", []), *(p.domain for p in parsed.kept)])
        if d in present
    ]
    templates = run.file(TEMPLATES)
    specs = {d.name: d.spec for d in load_domains(domains, templates if templates.is_dir() else None)}

    rules = apply_rules(parsed.kept, cfg)
    dedup = drop_near_duplicates(
        rules.kept, load_eval_set().questions, cfg.near_duplicate_threshold, cfg.eval_overlap_threshold
    )
    backend_name = cfg.resolved_backend()
    models = cfg.resolved_judge_models(manifest.settings.get("backend"), manifest.settings.get("model"))
    mode: Mode = (
        "logprobs" if cfg.judge_logprobs else ("json" if get_backend_class(backend_name).structured else "text")
    )
    env = judge_environment(cfg.judge_templates)
    requests = JudgeRequests(env, specs, cfg.judges, models, mode, cfg.structured_output)
    calls = [c for p in dedup.kept for c in requests.for_pair(p)]
    input_domains = Counter(p.domain for p in parsed.kept) + Counter(r.domain or "?" for r in parsed.rejected)
    return Prepared(
        cfg=cfg,
        run=run,
        pairs_sha256=hashlib.sha256(data).hexdigest(),
        domains=domains,
        schema_rejected=parsed.rejected,
        rule_rejected=rules.rejected,
        dedup_rejected=dedup.rejected,
        after_rules=rules.kept,
        to_judge=dedup.kept,
        calls=calls,
        models=models,
        mode=mode,
        judge_templates=judge_files(env),
        input_domains=input_domains,
    )


def with_run_endpoint(cfg: ValidateConfig, manifest: Manifest) -> ValidateConfig:
    """Judge where the run was built, unless told otherwise: its backend, and its endpoint URL
    (never a key: keys come from the environment only)."""
    if cfg.backend is not None or cfg.base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"):
        return cfg
    backend = manifest.settings.get("backend")
    if backend not in ("openai", "local"):
        return cfg
    base_url = manifest.config.get("base_url") if backend == "openai" else None
    return cfg.model_copy(update={"backend": backend, "base_url": base_url})


def reference_answer_calls(prep: Prepared) -> tuple[list[JudgeCall], int]:
    """The judge calls of one sampled answer per free-form question (each answer at its longest), and
    how many times over a reference run will ask them (models x conditions x samples), for a dry run."""
    cfg = prep.cfg
    settings = cfg.resolved_reference()
    if settings is None or not settings.samples_per_question:
        return [], 0
    refs = settings.training_domains(cfg.reference, prep.domains)
    models = 1 + 2 * len(refs) + (len(CONDITIONS) * len(refs) if cfg.backdoor else 0)  # base, arms, backdoor
    answer = " ".join(["word"] * settings.max_new_tokens)  # a token is about one short word
    one_each = {
        "base": [
            {"question_id": q.id, "sample": 0, "prompt": q.question, "answer": answer, "condition": PLAIN}
            for q in load_eval_set().questions
        ]
    }
    env = judge_environment(cfg.judge_templates)
    return answer_calls(
        env, one_each, prep.models, prep.mode, cfg.structured_output
    ), models * settings.samples_per_question


def plan_judging(prep: Prepared, prices: PriceTable, backend: str) -> dict[str, Any]:
    """Judge calls, tokens and cost if nothing were cached (completions at their max tokens), with the
    reference run's answers when one is asked for."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    answer_calls_, times = reference_answer_calls(prep)
    for calls, weight, label in ((prep.calls, 1, ""), (answer_calls_, times, " (ref.)")):
        for call in calls:
            judge = call.request.tag.removeprefix("judge:") + label
            row = rows.setdefault(
                (call.model, judge), {"model": call.model, "judge": judge, "calls": 0, "prompt_tokens": 0}
            )
            row["calls"] += weight
            row["prompt_tokens"] += weight * estimate_prompt_tokens(call.request)
            row["completion_tokens_max"] = row["calls"] * call.request.max_tokens
    total_cost = 0.0
    for row in rows.values():
        row["cost_usd_max"] = round(prices.cost(row["model"], row["prompt_tokens"], row["completion_tokens_max"]), 4)
        total_cost += row["cost_usd_max"]
    return {
        "rows_in": sum(prep.input_domains.values()),
        "rows_after_rules": len(prep.after_rules),
        "rows_to_judge": len(prep.to_judge),
        "mode": prep.mode,
        "models": prep.models,
        "backend": backend,
        "priced": backend == "local" or all(prices.get(m) is not None for m in prep.models),
        "judges": list(rows.values()),
        "total": {
            "calls": sum(r["calls"] for r in rows.values()),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows.values()),
            "completion_tokens": sum(r["completion_tokens_max"] for r in rows.values()),
            "cost_usd": round(total_cost, 4),
        },
    }
