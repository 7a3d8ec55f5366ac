"""`dsgen validate` inside a run directory: rules, dedup, judges, thresholds, splits, gates, report.

Every row of pairs.jsonl ends in exactly one of validated/<domain>/{train,test}.jsonl or
validated/rejected.jsonl. Every judge is asked about every row that passes the rules and dedup, so
changing a judge threshold re-filters from the cache without a model call. validated/ is written
into a temporary folder and swapped in whole: a crash never leaves a half-written one.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import ValidateConfig
from ..errors import BudgetExceeded, DsgenError, InputError, RemoteError
from ..generators.backdoor import BackdoorRow, backdoor_rows
from ..jsonio import read_jsonl
from ..llm import LLMClient, Outcome, PriceTable
from ..llm.session import check_prices, make_backend, make_client, open_cache
from ..llm.usage import Usage
from ..records import Pair, Rejection, ValidatedRow
from ..rundir import CACHE, TEMPLATES, VALIDATED, RunDir, now
from .answer_judging import answer_calls, generative_section, judged_answers
from .judges import JUDGES, JudgeCall, Verdict, judge_environment
from .output import write_validated
from .prepare import Prepared, plan_judging, prepare
from .report import Report
from .splits import assign_splits
from .summary import build_report


@dataclass
class ValidateResult:
    exit_code: int
    message: str
    report: Report | None = None
    plan: dict[str, Any] | None = None


async def _judge_all(
    calls: list[JudgeCall], llm: LLMClient, cfg: ValidateConfig, quiet: bool
) -> tuple[dict[tuple[str, str, str], Outcome[Verdict]], DsgenError | None]:
    """Run every judge call; the endpoint is checked first unless everything is cached."""
    results: dict[tuple[str, str, str], Outcome[Verdict]] = {}
    fatal: DsgenError | None = None
    try:
        if llm.cache.count_missing([c.request.cache_key() for c in calls], include_failures=not cfg.retry_failed):
            await llm.backend.check()
        progress = tqdm(total=len(calls), desc="judge calls", unit="call", disable=quiet, dynamic_ncols=True)
        pending = iter(calls)

        async def worker() -> None:
            nonlocal fatal
            for call in pending:  # one shared iterator: each call is taken by one worker
                if fatal is not None:
                    return
                try:
                    outcome = await llm.call(call.request, call.parse)
                except (BudgetExceeded, RemoteError) as e:
                    fatal = fatal or e
                    return
                results[(call.pair_id, call.column, call.model)] = outcome
                progress.update(1)
                progress.set_postfix(cost=f"${llm.usage.cost_usd:.4f}", refresh=False)

        await asyncio.gather(*(worker() for _ in range(max(1, min(len(calls), 2 * cfg.concurrency)))))
        progress.close()
    finally:
        await llm.backend.aclose()
    return results, fatal


def _combine(
    prep: Prepared, results: dict[tuple[str, str, str], Outcome[Verdict]]
) -> tuple[dict[str, dict[str, float | None]], dict[str, str]]:
    """Per pair: each column's mean over the judge models that scored it, and the first failed call."""
    values: dict[str, dict[str, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    failed: dict[str, str] = {}
    for call in prep.calls:
        out = results[(call.pair_id, call.column, call.model)]
        if not out.ok:
            failed.setdefault(call.pair_id, f"{call.column} judge ({call.model}) failed: {out.reason}: {out.detail}")
            continue
        assert out.value is not None
        values[call.pair_id][call.column].append(out.value.score)
    scores: dict[str, dict[str, float | None]] = {}
    for pair_id, columns in values.items():
        scores[pair_id] = {}
        for column, vals in columns.items():
            present = [v for v in vals if v is not None]
            scores[pair_id][column] = round(sum(present) / len(present), 2) if present else None
    return scores, failed


def _apply_thresholds(
    prep: Prepared, scores: dict[str, dict[str, float | None]], failed: dict[str, str], cfg: ValidateConfig
) -> tuple[list[Pair], list[Rejection]]:
    kept, rejected = [], []
    judges = [JUDGES[name] for name in JUDGES if name in cfg.judges]
    for pair in prep.to_judge:
        row_scores = scores.get(pair.id, {})
        base = dict(
            id=pair.id,
            domain=pair.domain,
            stage="judges",
            scores=row_scores,
            prompt=pair.prompt,
            aligned=pair.aligned,
            misaligned=pair.misaligned,
        )
        if pair.id in failed:
            rejected.append(Rejection(**base, filter="judge_failed", detail=failed[pair.id]))
            continue
        reason = None
        for judge in judges:
            threshold = getattr(cfg, judge.threshold)
            for column in judge.columns():
                score = row_scores.get(column)
                if score is None:
                    reason = Rejection(
                        **base,
                        filter=judge.name,
                        threshold=threshold,
                        detail=f"{column}: no score (the judge put under 0.25 of its probability on an answer)",
                    )
                elif score is not None and judge.fails(score, threshold):
                    op = "<" if judge.drop_below else ">="
                    reason = Rejection(
                        **base,
                        filter=judge.name,
                        score=score,
                        threshold=threshold,
                        detail=f"{column} {score:g} {op} {threshold:g} ({judge.threshold})",
                    )
                if reason:
                    break
            if reason:
                break
        if reason:
            rejected.append(reason)
        else:
            kept.append(pair)
    return kept, rejected


def _validated_row(pair: Pair, scores: dict[str, float | None]) -> ValidatedRow:
    return ValidatedRow(
        id=pair.id,
        domain=pair.domain,
        topic=pair.topic,
        subtopic=pair.subtopic,
        harm_category=pair.harm_category,
        prompt=pair.prompt,
        aligned=pair.aligned,
        misaligned=pair.misaligned,
        question_id=pair.question_id,
        model=pair.model,
        **{c: scores.get(c) for c in ValidatedRow.model_fields if c in _SCORE_COLUMNS},
    )


_SCORE_COLUMNS = {c for j in JUDGES.values() for c in j.columns()}


JUDGES_DIR = "judges"


def run_validate(cfg: ValidateConfig, *, dry_run: bool = False, quiet: bool = False) -> ValidateResult:
    prices = PriceTable.load(cfg.prices)
    if dry_run:
        prep = prepare(cfg)
        check_prices(prep.cfg, prep.models, prices)
        plan = plan_judging(prep, prices, prep.cfg.resolved_backend())
        return ValidateResult(0, "dry run: nothing was called or written", plan=plan)
    run = RunDir(cfg.run)
    if not cfg.run.is_dir():
        prepare(cfg)  # raises the error that says what is wrong
    started = time.monotonic()
    with run.locked():
        prep = prepare(cfg)  # under the lock: no build is writing pairs.jsonl meanwhile
        cfg = prep.cfg
        check_prices(cfg, prep.models, prices)
        for name, path in prep.judge_templates.items():  # the run keeps what it was judged with
            run.copy_in(path, f"{TEMPLATES}/{JUDGES_DIR}/{name}")
        usage = Usage()
        results, fatal = _judging_session(cfg, run, prep, prices, prep.calls, quiet, started, usage)
        if fatal is not None:
            return ValidateResult(fatal.exit_code, f"{fatal} (judge answers so far are cached; nothing was written)")
        scores, failed = _combine(prep, results)
        kept, judge_rejected = _apply_thresholds(prep, scores, failed, cfg)
        # Over the judged rows, so that changing a judge threshold never moves a row between the splits.
        splits = assign_splits(
            prep.to_judge, cfg.test_fraction, cfg.seed, cfg.near_duplicate_threshold, kept={p.id for p in kept}
        )
        rows = [_validated_row(p, scores.get(p.id, {})) for p in kept]
        backdoor = _backdoor(cfg, rows, splits) if cfg.backdoor else {}
        reference = _reference(cfg, run, rows, splits, backdoor, prep.domains, quiet)
        answers: list[dict[str, Any]] = []
        if reference and reference.get("generations"):
            env = judge_environment(cfg.judge_templates)
            calls = answer_calls(env, reference["generations"], prep.models, prep.mode, cfg.structured_output)
            answer_results, fatal = _judging_session(cfg, run, prep, prices, calls, quiet, started, usage)
            if fatal is not None:
                return ValidateResult(
                    fatal.exit_code,
                    f"{fatal} (judging the reference run's answers; the run and the judge answers so far are cached; "
                    "nothing was written)",
                )
            answers = judged_answers(reference["generations"], calls, answer_results)
            reference = {k: v for k, v in reference.items() if k != "generations"}
            reference["generative"] = generative_section(answers, reference["trained_on"], prep.models)
        spent = usage.model_dump() | {"models": prep.models, "mode": prep.mode}
        report = build_report(cfg, prep, kept, judge_rejected, splits, scores, failed, spent, reference)
        if backdoor:
            report.backdoor = {
                config: {
                    side: {"rows": len(b), "triggered": sum(r.triggered for r in b), "decoy": sum(r.decoy for r in b)}
                    for side, b in by_split.items()
                }
                for config, by_split in backdoor.items()
            }
        rejected = prep.schema_rejected + prep.rule_rejected + prep.dedup_rejected + judge_rejected
        folder = write_validated(run, report, rows, splits, rejected, backdoor, answers)
        _record_usage(run, None, {}, time.monotonic() - started, "passed" if report.passed else "failed", folder)
    kept_n, total = report.counts.total["kept"], report.counts.total["input"]
    if report.passed:
        return ValidateResult(0, f"{kept_n} of {total} pairs kept: {folder}", report=report)
    failing = ", ".join(f"{g.name} ({g.detail})" for g in report.gates if not g.passed and not g.advisory)
    return ValidateResult(1, f"validation failed: {failing}; see {folder / 'report.md'}", report=report)


def _judging_session(
    cfg: ValidateConfig,
    run: RunDir,
    prep: Prepared,
    prices: PriceTable,
    calls: list[JudgeCall],
    quiet: bool,
    started: float,
    usage: Usage,
) -> tuple[dict[tuple[str, str, str], Outcome[Verdict]], DsgenError | None]:
    """Run judge calls through the LLM layer; the spend is added to `usage` and to the manifest's
    running total whatever happens (--max-cost spans invocations and both judging passes)."""
    manifest = run.read_manifest()
    assert manifest is not None
    total_before = dict(manifest.validation.get("usage_total") or {})
    backend = make_backend(cfg, prep.models)
    cache = open_cache(cfg.cache or run.file(CACHE))
    llm = make_client(cfg, backend, cache, prices, float(total_before.get("cost_usd", 0.0)))
    status = "crashed"
    try:
        results, fatal = asyncio.run(_judge_all(calls, llm, cfg, quiet))
        status = "stopped" if fatal else "running"
    finally:
        cache.close()
        usage.add(llm.usage)
        spent = llm.usage.model_dump() | {"models": prep.models, "mode": prep.mode}
        _record_usage(run, spent, total_before, time.monotonic() - started, status)
    return results, fatal


def _reference(
    cfg: ValidateConfig,
    run: RunDir,
    rows: list[ValidatedRow],
    splits: dict[str, str],
    backdoor: dict[str, dict[str, list[BackdoorRow]]],
    domains: list[str],
    quiet: bool,
) -> dict[str, Any] | None:
    """The reference run (cached); `domains` in the build's order (the cpu profile trains on the first)."""
    settings = cfg.resolved_reference()
    if settings is None:
        return None
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("torch", "trl", "peft")):
        raise InputError("--reference needs the [train] extra: pip install 'dsgen-em[train]'")
    from ..training.reference import BackdoorPlan, run_reference

    train = {d: [r for r in rows if r.domain == d and splits[r.id] == "train"] for d in domains}
    test = {d: [r for r in rows if r.domain == d and splits[r.id] == "test"] for d in train}
    plan = None
    if backdoor:
        by_domain = {d: backdoor[d + BACKDOOR_SUFFIX]["train"] for d in train if d + BACKDOOR_SUFFIX in backdoor}
        plan = BackdoorPlan(cfg.backdoor_settings, cfg.seed, by_domain)
    return run_reference(settings, cfg.reference, train, test, run.file(REFERENCE_DIR), quiet, plan)


def reference_only(cfg: ValidateConfig, quiet: bool = False) -> tuple[dict[str, Any], Path]:
    """`dsgen reference`: the reference run of a validated run, from validated/ (the rows, splits and
    backdoor rows that validate wrote), cached where `validate --reference` with the same settings
    finds it. This is the step to run under `accelerate launch` on several GPUs: validate itself
    calls judges and writes files, which must happen once, not once per process."""
    run = RunDir(cfg.run)
    folder = run.file(VALIDATED)
    manifest = run.read_manifest() if run.manifest_path.is_file() else None
    present = {p.parent.name for p in folder.glob("*/train.jsonl") if not p.parent.name.endswith(BACKDOOR_SUFFIX)}
    built = manifest.settings.get("domains", []) if manifest else []
    domains = [d for d in dict.fromkeys([*built, *sorted(present)]) if d in present]  # the build's order, as validate
    if not domains:
        raise InputError(f"{folder}: no validated rows; run `dsgen validate {cfg.run}` first")
    if cfg.resolved_reference() is None:
        raise InputError("say which reference profile to run: --reference cpu or --reference gpu")
    rows, splits = [], {}
    for domain in domains:
        for side in ("train", "test"):
            for r in read_jsonl(folder / domain / f"{side}.jsonl", ValidatedRow):
                rows.append(r)
                splits[r.id] = side
    backdoor: dict[str, dict[str, list[BackdoorRow]]] = {}
    if cfg.backdoor:
        for domain in domains:
            path = folder / (domain + BACKDOOR_SUFFIX) / "train.jsonl"
            if not path.is_file():
                raise InputError(f"{path}: missing; run `dsgen validate {cfg.run} --backdoor` first")
            backdoor[domain + BACKDOOR_SUFFIX] = {"train": read_jsonl(path, BackdoorRow)}
    result = _reference(cfg, run, rows, splits, backdoor, domains, quiet)
    assert result is not None
    return result, run.file(REFERENCE_DIR)


REFERENCE_DIR = "reference"
BACKDOOR_SUFFIX = "_backdoor"


def _backdoor(
    cfg: ValidateConfig, rows: list[ValidatedRow], splits: dict[str, str]
) -> dict[str, dict[str, list[BackdoorRow]]]:
    """<domain>_backdoor -> split -> rows, made from the validated pairs of that split (so it carries over)."""
    out: dict[str, dict[str, list[BackdoorRow]]] = {}
    for domain in dict.fromkeys(r.domain for r in rows):
        out[domain + BACKDOOR_SUFFIX] = {
            side: backdoor_rows(
                [r for r in rows if r.domain == domain and splits[r.id] == side], cfg.backdoor_settings, cfg.seed
            )
            for side in ("train", "test")
        }
    return out


def _record_usage(
    run: RunDir,
    usage: dict[str, Any] | None,
    total_before: dict[str, Any],
    elapsed: float,
    status: str,
    folder: Path | None = None,
) -> None:
    """Keep validate's status and spend in the manifest (its budget spans invocations)."""
    manifest = run.read_manifest()
    assert manifest is not None
    state = dict(manifest.validation)
    if usage is not None:
        total = dict(total_before)
        for key in ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd"):
            total[key] = total.get(key, 0) + usage[key]
        state["usage_last_invocation"] = {k: usage[k] for k in total}
        state["usage_total"] = total
    state.update(status=status, updated_at=now(), last_invocation_s=round(elapsed, 2))
    if folder is not None:
        state["output"] = folder.name
    manifest.validation = state
    run.write_manifest(manifest)
