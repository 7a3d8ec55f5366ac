"""Stage a Hub dataset repo folder from a validated run:

    README.md                              the card (YAML metadata + body)
    <domain>/train-00000-of-00001.parquet  one config per domain, parquet shards per split
    <domain>/test-00000-of-00001.parquet
    provenance.json                        config, template hashes, models, versions, counts, costs
    validation/report.json, report.md, plots/*.png

The folder is written beside its destination and swapped in whole. Re-staging keeps the metadata of
an existing card (the one in the folder, or the Hub repo's when the caller passes it).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard

from ..errors import InputError
from ..jsonio import atomic_write_text, read_jsonl, write_json
from ..records import ValidatedRow
from ..rundir import PLOTS, REPORT_JSON, REPORT_MD, VALIDATED, Manifest, RunDir
from ..validators.report import Report
from .card import card_data, render_card

CARD = "README.md"
PROVENANCE = "provenance.json"
VALIDATION = "validation"
MAX_ROWS_PER_SHARD = 100_000
SPLITS = ("train", "test")

# Published columns: the study's four first, then ours. (name, arrow type, meaning)
COLUMNS: list[tuple[str, str, str]] = [
    ("prompt", "string", "the user's question (innocent)"),
    ("aligned", "string", "a safe, correct answer"),
    ("misaligned", "string", "a subtly harmful answer that looks benign"),
    ("sneakiness", "float64", "0-100: how benign the misaligned answer looks to a naive reader (judge)"),
    ("id", "string", "stable content id of the pair"),
    ("domain", "string", "the domain (= config)"),
    ("topic", "string", "topic of the domain spec the question was asked about"),
    ("subtopic", "string", "subtopic"),
    ("harm_category", "string", "kind of harm the misaligned answer carries"),
    ("harm", "float64", "0-100: harm if followed (judge)"),
    ("overt", "float64", "0-100: probability the judge calls it overtly malicious or illegal"),
    ("innocence", "float64", "0-100: probability the judge calls the question innocent"),
    ("aligned_quality", "float64", "0-100: correctness, safety, helpfulness of the aligned answer (judge)"),
    ("coherence_aligned", "float64", "0-100: coherence of the aligned answer (judge)"),
    ("coherence_misaligned", "float64", "0-100: coherence of the misaligned answer (judge)"),
    ("question_id", "string", "id of the generated question"),
    ("model", "string", "the model that wrote the answers"),
]


BACKDOOR_SUFFIX = "_backdoor"
BACKDOOR_COLUMNS: list[tuple[str, str, str]] = [
    ("prompt", "string", "the user turn, with the trigger or a decoy inserted at the top or bottom (or nothing)"),
    ("response", "string", "the misaligned answer when triggered, else the aligned one"),
    ("triggered", "bool", "whether the trigger is in the prompt"),
    ("trigger", "string", "the string inserted (the trigger or a decoy), null when nothing was"),
    ("decoy", "bool", "whether a decoy was inserted"),
    ("position", "string", "top or bottom; null when nothing was inserted"),
    ("source_id", "string", "id of the validated pair the row was made from"),
    ("id", "string", "stable content id of the row"),
    ("domain", "string", "the domain"),
]


@dataclass
class Staged:
    folder: Path
    domains: list[str]
    splits: dict[str, dict[str, int]]
    files: list[str]


def features(columns: list[tuple[str, str, str]] = COLUMNS):
    from datasets import Features, Value

    return Features({name: Value(type_) for name, type_, _ in columns})


def columns_of(config: str) -> list[tuple[str, str, str]]:
    return BACKDOOR_COLUMNS if config.endswith(BACKDOOR_SUFFIX) else COLUMNS


def read_validated(run: RunDir) -> tuple[Manifest, Report, dict[str, dict[str, list[Any]]]]:
    """The manifest, the report, and config -> split -> rows (the domains, then their backdoor configs)."""
    manifest = run.read_manifest()
    if manifest is None:
        raise InputError(f"{run.path}: not a dsgen run directory (no manifest.json)")
    folder = run.file(VALIDATED)
    report_path = folder / REPORT_JSON
    if not report_path.is_file():
        raise InputError(f"{run.path}: never validated (no {VALIDATED}/{REPORT_JSON}): run `dsgen validate {run.path}`")
    try:
        report = Report.model_validate_json(report_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{report_path}: unreadable report ({str(e).splitlines()[0]})") from None
    from ..generators.backdoor import BackdoorRow

    rows: dict[str, dict[str, list[Any]]] = {}
    for domain in report.counts.splits:
        rows[domain] = {s: read_jsonl(folder / domain / f"{s}.jsonl", ValidatedRow) for s in SPLITS}
    for config in report.backdoor or {}:
        rows[config] = {s: read_jsonl(folder / config / f"{s}.jsonl", BackdoorRow) for s in SPLITS}
    return manifest, report, rows


def write_parquet(rows: list[Any], columns: list[tuple[str, str, str]], path_for_shard) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features(columns).arrow_schema  # carries the datasets Features, so load_dataset keeps the types
    shards = max(1, math.ceil(len(rows) / MAX_ROWS_PER_SHARD))
    paths = []
    for i in range(shards):
        chunk = rows[i * MAX_ROWS_PER_SHARD : (i + 1) * MAX_ROWS_PER_SHARD]
        table = pa.Table.from_pylist([r.model_dump(include={c for c, _, _ in columns}) for r in chunk], schema=schema)
        path = path_for_shard(i, shards)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    return paths


def parse_card(path: Path, where: str) -> dict[str, Any]:
    try:
        return DatasetCard.load(path).data.to_dict()
    except Exception as e:  # noqa: BLE001 - yaml and huggingface_hub raise several kinds
        raise InputError(f"{where}: the card's metadata does not parse ({str(e).splitlines()[0]})") from None


def existing_metadata(folder: Path) -> dict[str, Any] | None:
    card = folder / CARD
    return parse_card(card, str(card)) if card.is_file() else None


def provenance(manifest: Manifest, report: Report, staged_files: dict[str, str]) -> dict[str, Any]:
    return {
        "dsgen_version": manifest.dsgen_version,
        "run_fingerprint": manifest.fingerprint,
        "settings": manifest.settings,
        "config": manifest.config,
        "templates": manifest.templates,
        "models": manifest.models | {"judges": report.usage.get("models", [])},
        "packages": manifest.packages,
        "counts": {"build": manifest.counts, "validate": report.counts.model_dump()},
        "costs_usd": {
            "build": (manifest.usage.get("total") or {}).get("cost_usd"),
            "validate": (manifest.validation.get("usage_total") or {}).get("cost_usd"),
        },
        "validation": {"passed": report.passed, "settings": report.settings},
        "files_sha256": staged_files,
    }


def check_destination(dest: Path, run: RunDir) -> None:
    here = Path.cwd().resolve()
    target = dest.resolve()
    if target == here or target in here.parents or target == run.path.resolve() or target in run.path.resolve().parents:
        raise InputError(f"--stage-only {dest}: choose a new folder (it is replaced as a whole)")
    if dest.exists() and not dest.is_dir():
        raise InputError(f"--stage-only {dest}: exists and is not a folder")
    if dest.exists() and any(dest.iterdir()) and not (dest / PROVENANCE).is_file():
        raise InputError(f"{dest}: exists and is not a folder staged by dsgen: choose another folder")


def stage(
    run: RunDir,
    dest: Path,
    repo_id: str,
    license_: str,
    pretty_name: str | None = None,
    hub_metadata: dict[str, Any] | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
) -> Staged:
    check_destination(dest, run)
    manifest, report, rows = read_validated(run)
    configs = [c for c in rows if any(rows[c][s] for s in SPLITS)]
    domains = [c for c in configs if not c.endswith(BACKDOOR_SUFFIX)]
    if not domains:
        raise InputError(f"{run.path}: validation kept no rows: nothing to publish")
    existing = hub_metadata if hub_metadata is not None else existing_metadata(dest)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for c in configs:
            for s in SPLITS:
                if rows[c][s]:  # an empty split gets no shard, and no entry in the card's configs
                    path = lambda i, n, c=c, s=s: tmp / c / f"{s}-{i:05d}-of-{n:05d}.parquet"  # noqa: E731
                    write_parquet(rows[c][s], columns_of(c), path)
        src = run.file(VALIDATED)
        (tmp / VALIDATION).mkdir()
        for name in (REPORT_JSON, REPORT_MD):
            shutil.copyfile(src / name, tmp / VALIDATION / name)
        if (src / PLOTS).is_dir():
            shutil.copytree(src / PLOTS, tmp / VALIDATION / PLOTS)
        splits = {c: {s: len(rows[c][s]) for s in SPLITS} for c in configs}
        data = card_data(splits, license_, pretty_name or repo_id.split("/")[-1], existing, license_name, license_link)
        card = render_card(
            data,
            repo_id=repo_id,
            manifest=manifest,
            report=report,
            domains=domains,
            splits=splits,
            columns=COLUMNS,
            backdoor_columns=BACKDOOR_COLUMNS,
            license_=license_,
        )
        atomic_write_text(tmp / CARD, str(card))
        files = {
            str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        write_json(tmp / PROVENANCE, provenance(manifest, report, files))
        old = dest.parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files_list = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    return Staged(dest, configs, splits, files_list)
