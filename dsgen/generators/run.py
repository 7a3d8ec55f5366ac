"""A build inside its run directory: check settings, plan or run, write files and the manifest."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..config import BuildConfig
from ..domains import Domain, load_domains
from ..errors import BudgetExceeded, InputError, RemoteError
from ..jsonio import write_jsonl
from ..llm import PriceTable, ResponseCache, get_backend_class
from ..llm.client import estimate_prompt_tokens
from ..llm.session import check_prices, make_backend, make_client, open_cache
from ..llm.usage import print_cost_table
from ..rundir import CACHE, FAILURES, PAIRS, QUESTIONS, Manifest, RunDir, fingerprint
from .build import FIRST_WAVE_MARGIN, Builder
from .requests import answer_request, pair_request, plan_combos, question_request


@dataclass
class BuildResult:
    exit_code: int
    message: str
    manifest: Manifest | None = None
    plan: dict[str, Any] | None = None


def data_settings(cfg: BuildConfig, domains: list[Domain], structured: bool) -> dict[str, Any]:
    """What shapes the data, and so is fingerprinted. Not --n: a larger --n extends a run."""
    pair_mode = cfg.pair_mode if cfg.pair_mode != "auto" else ("joint" if structured else "separate")
    return {
        "backend": cfg.resolved_backend(),
        "model": cfg.resolved_model(),
        "domains": [d.name for d in domains],
        "seed": cfg.seed,
        "temperature": cfg.resolved_sampling()[0],
        "top_p": cfg.resolved_sampling()[1],
        "max_tokens": cfg.resolved_max_tokens().model_dump(),
        "questions_per_call": cfg.questions_per_call,
        "pair_mode": pair_mode,
        "structured_output": cfg.structured_output if structured else "none",
        "near_duplicate_threshold": cfg.near_duplicate_threshold,
        "templates": {d.name: d.template_hashes() for d in domains},
    }


def plan_build(cfg: BuildConfig, domains: list[Domain], structured: bool, prices: PriceTable) -> dict[str, Any]:
    """Planned calls, tokens and cost of a run without failures or duplicates (each answer at its max
    tokens, so a high estimate of those calls), calling nothing."""
    model = cfg.resolved_model()
    settings = data_settings(cfg, domains, structured)
    rows, totals = [], {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    for d in domains:
        combos = plan_combos(d, cfg.seed)
        ex = d.spec.exemplars[0].prompt
        harm = d.spec.harm_categories[0]
        q_calls = math.ceil(cfg.n * FIRST_WAVE_MARGIN / cfg.questions_per_call)
        stages = [("questions", q_calls, question_request(d, combos, 0, cfg, model, structured)[1])]
        if settings["pair_mode"] == "joint":
            stages.append(("pair", cfg.n, pair_request(d, ex, harm, cfg, model, structured)))
        else:
            for side in ("aligned", "misaligned"):
                stages.append((side, cfg.n, answer_request(d, ex, harm, side, cfg, model, structured)))
        for stage, calls, req in stages:
            pt, ct = calls * estimate_prompt_tokens(req), calls * req.max_tokens
            cost = prices.cost(model, pt, ct)
            rows.append(
                {
                    "domain": d.name,
                    "stage": stage,
                    "calls": calls,
                    "prompt_tokens": pt,
                    "completion_tokens_max": ct,
                    "cost_usd_max": round(cost, 4),
                }
            )
            totals["calls"] += calls
            totals["prompt_tokens"] += pt
            totals["completion_tokens"] += ct
            totals["cost_usd"] += cost
    totals["cost_usd"] = round(totals["cost_usd"], 4)
    return {
        "model": model,
        "backend": settings["backend"],
        "priced": prices.get(model) is not None,
        "stages": rows,
        "total": totals,
    }


def run_build(cfg: BuildConfig, *, dry_run: bool = False, quiet: bool = False, command: str = "") -> BuildResult:
    domains = load_domains(cfg.domains, cfg.templates)
    prices = PriceTable.load(cfg.prices)
    model = cfg.resolved_model()
    structured = get_backend_class(cfg.resolved_backend()).structured
    check_prices(cfg, [model], prices)
    if dry_run:
        plan = plan_build(cfg, domains, structured, prices)
        return BuildResult(0, "dry run: nothing was called or written", plan=plan)
    if cfg.out is None:
        raise InputError("--out is required: the run directory to write (e.g. --out runs/medical-v1)")

    run = RunDir(cfg.out)
    settings = data_settings(cfg, domains, structured)
    previous = run.read_manifest()
    run.check_resumable(previous, settings)

    backend = make_backend(cfg, [model])
    started = time.monotonic()
    # Held until the outputs are written: the run-directory lock and the cache connection.
    with contextlib.ExitStack() as held:
        exit_code, status, message = 0, "complete", ""
        builder: Builder | None = None
        cache: ResponseCache | None = None

        async def go() -> None:
            nonlocal builder, cache, previous
            try:
                await backend.check()  # before anything is written: an unreachable endpoint is bad input
                held.enter_context(run.locked())
                previous = run.read_manifest()  # again, now that no other process can change it
                run.check_resumable(previous, settings)
                _start_manifest(run, previous, cfg, settings, domains, command)
                cache = open_cache(cfg.cache or run.file(CACHE))
                held.callback(cache.close)
                spent_before = float((previous.usage.get("total") or {}).get("cost_usd", 0.0)) if previous else 0.0
                llm = make_client(cfg, backend, cache, prices, spent_before)
                builder = Builder(cfg, domains, llm, model, quiet)
                await builder.run()
            finally:
                await backend.aclose()

        interrupted: KeyboardInterrupt | None = None
        try:
            asyncio.run(go())
        except KeyboardInterrupt as e:
            if builder is None:
                raise
            interrupted = e  # keep what was made: write it, then let the CLI report the interruption
        assert builder is not None
        if interrupted is not None:
            exit_code, status, message = 130, "interrupted", "interrupted"
        elif isinstance(builder.fatal, BudgetExceeded):
            exit_code, status, message = 3, "budget_stopped", str(builder.fatal)
        elif isinstance(builder.fatal, RemoteError):
            exit_code, status, message = 4, "remote_failed", str(builder.fatal)
        elif builder.fatal is not None:
            exit_code, status, message = builder.fatal.exit_code, "failed", str(builder.fatal)

        questions, pairs, failures = builder.ordered_results()
        write_jsonl(run.file(QUESTIONS), questions)
        write_jsonl(run.file(PAIRS), pairs)
        write_jsonl(run.file(FAILURES), failures)
        counts = builder.counts()
        if exit_code == 0 and counts["failure_rate"] > cfg.max_failure_rate:
            exit_code, status = 1, "failed"
            message = (
                f"{counts['failed_calls']} of {counts['logical_calls']} calls failed "
                f"({counts['failure_rate']:.1%} > --max-failure-rate {cfg.max_failure_rate:.0%}): "
                f"see {run.file(FAILURES)}"
            )
        if exit_code == 0:
            short = f", shortfall {counts['shortfall']} (see manifest counts)" if counts["shortfall"] else ""
            message = f"{counts['pairs']} pairs in {run.file(PAIRS)}{short}"
        manifest = _finish_manifest(run, status, counts, builder, previous, time.monotonic() - started)
        if interrupted is not None:
            raise interrupted
        if builder.crash is not None:
            raise builder.crash
        return BuildResult(exit_code, message, manifest=manifest)


def _public_config(cfg: BuildConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")  # holds no secret: keys come from the environment only


def _start_manifest(
    run: RunDir,
    previous: Manifest | None,
    cfg: BuildConfig,
    settings: dict[str, Any],
    domains: list[Domain],
    command: str,
) -> None:
    run.clear_stale_temp_files()
    manifest = (
        previous.model_copy() if previous else Manifest(fingerprint=fingerprint(settings), settings=settings, n=cfg.n)
    )
    manifest.status = "running"
    manifest.n = cfg.n
    manifest.config = _public_config(cfg)
    manifest.config["command"] = command
    manifest.templates = settings["templates"]
    manifest.models = {"generator": settings["model"], "backend": settings["backend"]}
    run.write_manifest(manifest)  # first: a folder with a manifest is a run, whatever happens next
    run.copy_templates(domains)


def _finish_manifest(
    run: RunDir, status: str, counts: dict[str, Any], builder: Builder, previous: Manifest | None, elapsed: float
) -> Manifest:
    manifest = run.read_manifest()
    assert manifest is not None
    usage = builder.llm.usage.model_dump()
    total = dict((previous.usage.get("total") if previous else None) or {})
    for key in ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd"):
        total[key] = total.get(key, 0) + usage[key]
    manifest.status = status
    manifest.counts = counts
    manifest.usage = {"last_invocation": usage, "total": total}
    manifest.timings = {
        "last_invocation_s": round(elapsed, 2),
        "total_s": round((previous.timings.get("total_s", 0.0) if previous else 0.0) + elapsed, 2),
    }
    run.write_manifest(manifest)
    return manifest


def print_plan(plan: dict[str, Any], out=sys.stderr) -> None:
    print(
        f"model {plan['model']} via {plan['backend']}: calls of a run without failures or duplicates, "
        "every answer at its max tokens",
        file=out,
    )
    print_cost_table([("domain", 12), ("stage", 12)], plan["stages"], plan["total"], out)
    if not plan["priced"] and plan["backend"] != "local":
        print(f"note: no price known for {plan['model']}; add it with --prices FILE", file=out)
