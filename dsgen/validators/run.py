"""`dsgen validate` inside a run directory: rules, dedup, judges, thresholds, splits, gates, report.

Every row of pairs.jsonl ends in exactly one of validated/<domain>/{train,test}.jsonl or
validated/rejected.jsonl. Every judge is asked about every row that passes the rules and dedup, so
changing a judge threshold re-filters from the cache without a model call. validated/ is written
into a temporary folder and swapped in whole: a crash never leaves a half-written one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import ValidateConfig
from ..domains import load_domains
from ..errors import BudgetExceeded, DsgenError, InputError, RemoteError
from ..evalset import eval_set_hash, load_eval_set
from ..generators.backdoor import BackdoorRow, backdoor_rows
from ..jsonio import write_json, write_jsonl
from ..llm import LLMClient, Outcome, PriceTable, get_backend_class
from ..llm.client import estimate_prompt_tokens
from ..llm.session import check_prices, make_backend, make_client, open_cache
from ..records import Pair, Rejection, ValidatedRow
from ..rundir import (
    CACHE,
    PAIRS,
    REJECTED,
    REPORT_JSON,
    TEMPLATES,
    VALIDATED,
    Manifest,
    RunDir,
    now,
)
from .dedup import drop_near_duplicates
from .gates import evaluate_gates
from .judges import JUDGES, JudgeCall, JudgeRequests, Mode, Verdict, judge_environment, judge_files
from .report import Counts, Report, count_rejections, distribution, length_bins
from .rules import FIELDS, apply_rules, read_pairs
from .splits import assign_splits


@dataclass
class ValidateResult:
    exit_code: int
    message: str
    report: Report | None = None
    plan: dict[str, Any] | None = None


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


def plan_judging(prep: Prepared, prices: PriceTable, backend: str) -> dict[str, Any]:
    """Judge calls, tokens and cost if nothing were cached (completions at their max tokens)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for call in prep.calls:
        row = rows.setdefault(
            (call.model, call.request.tag),
            {"model": call.model, "judge": call.request.tag.removeprefix("judge:"), "calls": 0, "prompt_tokens": 0},
        )
        row["calls"] += 1
        row["prompt_tokens"] += estimate_prompt_tokens(call.request)
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
            "calls": len(prep.calls),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows.values()),
            "completion_tokens": sum(r["completion_tokens_max"] for r in rows.values()),
            "cost_usd": round(total_cost, 4),
        },
    }


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


JUDGES_DIR = "judges"


def write_validated(
    run: RunDir,
    report: Report,
    rows: list[ValidatedRow],
    splits: dict[str, str],
    rejected: list[Rejection],
    backdoor: dict[str, dict[str, list[BackdoorRow]]] | None = None,
) -> Path:
    """Write validated/ into a temporary folder, then swap it in whole."""
    from .plots import write_report_markdown

    final = run.file(VALIDATED)
    tmp, old = run.file(f".{VALIDATED}.tmp"), run.file(f".{VALIDATED}.old")
    if old.is_dir() and not final.exists():
        old.rename(final)  # a crash between the two renames below: the previous output is still good
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    for domain in report.counts.splits:
        for side in ("train", "test"):
            write_jsonl(
                tmp / domain / f"{side}.jsonl", [r for r in rows if r.domain == domain and splits[r.id] == side]
            )
    for config, by_split in (backdoor or {}).items():
        for side, brows in by_split.items():
            write_jsonl(tmp / config / f"{side}.jsonl", brows)
    write_jsonl(tmp / REJECTED, rejected)
    write_json(tmp / REPORT_JSON, report)
    write_report_markdown(tmp, report, rows, splits, rejected)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


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
        manifest = run.read_manifest()
        assert manifest is not None
        total_before = dict(manifest.validation.get("usage_total") or {})
        backend = make_backend(cfg, prep.models)
        cache = open_cache(cfg.cache or run.file(CACHE))
        llm = make_client(cfg, backend, cache, prices, float(total_before.get("cost_usd", 0.0)))
        status = "crashed"
        try:
            results, fatal = asyncio.run(_judge_all(prep.calls, llm, cfg, quiet))
            status = "stopped" if fatal else "running"
        finally:
            cache.close()
            # Whatever happened, what was paid for counts towards the budget of the next invocation.
            usage = llm.usage.model_dump() | {"models": prep.models, "mode": prep.mode}
            _record_usage(run, usage, total_before, time.monotonic() - started, status)
        if fatal is not None:
            return ValidateResult(fatal.exit_code, f"{fatal} (judge answers so far are cached; nothing was written)")
        scores, failed = _combine(prep, results)
        kept, judge_rejected = _apply_thresholds(prep, scores, failed, cfg)
        # Over the judged rows, so that changing a judge threshold never moves a row between the splits.
        splits = assign_splits(
            prep.to_judge, cfg.test_fraction, cfg.seed, cfg.near_duplicate_threshold, kept={p.id for p in kept}
        )
        rows = [_validated_row(p, scores.get(p.id, {})) for p in kept]
        reference = _reference(cfg, run, rows, splits, quiet)
        report = build_report(cfg, prep, kept, judge_rejected, splits, scores, failed, usage, reference)
        backdoor = _backdoor(cfg, rows, splits) if cfg.backdoor else {}
        if backdoor:
            report.backdoor = {
                config: {
                    side: {"rows": len(b), "triggered": sum(r.triggered for r in b), "decoy": sum(r.decoy for r in b)}
                    for side, b in by_split.items()
                }
                for config, by_split in backdoor.items()
            }
        rejected = prep.schema_rejected + prep.rule_rejected + prep.dedup_rejected + judge_rejected
        folder = write_validated(run, report, rows, splits, rejected, backdoor)
        _record_usage(
            run, None, total_before, time.monotonic() - started, "passed" if report.passed else "failed", folder
        )
    kept_n, total = report.counts.total["kept"], report.counts.total["input"]
    if report.passed:
        return ValidateResult(0, f"{kept_n} of {total} pairs kept: {folder}", report=report)
    failing = ", ".join(f"{g.name} ({g.detail})" for g in report.gates if not g.passed and not g.advisory)
    return ValidateResult(1, f"validation failed: {failing}; see {folder / 'report.md'}", report=report)


def _reference(
    cfg: ValidateConfig, run: RunDir, rows: list[ValidatedRow], splits: dict[str, str], quiet: bool
) -> dict[str, Any] | None:
    settings = cfg.resolved_reference()
    if settings is None:
        return None
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("torch", "trl", "peft")):
        raise InputError("--reference needs the [train] extra: pip install 'dsgen-em[train]'")
    from ..training.reference import run_reference

    train = {
        d: [r for r in rows if r.domain == d and splits[r.id] == "train"] for d in dict.fromkeys(r.domain for r in rows)
    }
    test = {d: [r for r in rows if r.domain == d and splits[r.id] == "test"] for d in train}
    return run_reference(settings, cfg.reference, train, test, run.file(REFERENCE_DIR), quiet)


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
