"""Writing validated/: pair rows per domain and split, backdoor rows, rejected rows, the report and its
plots, into a temporary folder that is then swapped in whole (a crash never leaves half of one)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..generators.backdoor import BackdoorRow
from ..jsonio import write_json, write_jsonl
from ..records import Rejection, ValidatedRow
from ..rundir import REJECTED, REPORT_JSON, VALIDATED, RunDir
from .report import Report

REFERENCE_ANSWERS = "reference_answers.jsonl"  # the reference run's sampled answers with their verdicts


def write_validated(
    run: RunDir,
    report: Report,
    rows: list[ValidatedRow],
    splits: dict[str, str],
    rejected: list[Rejection],
    backdoor: dict[str, dict[str, list[BackdoorRow]]] | None = None,
    answers: list[dict[str, Any]] | None = None,
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
    if answers:
        write_jsonl(tmp / REFERENCE_ANSWERS, answers)
    write_json(tmp / REPORT_JSON, report)
    write_report_markdown(tmp, report, rows, splits, rejected)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
