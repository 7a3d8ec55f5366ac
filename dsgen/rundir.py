"""The run directory: the unit of work. Its manifest pins the settings that shape the data.

Re-running with the same settings resumes; a larger --n extends; any other change to those
settings is refused (exit 2) with the name of the setting that differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from . import __version__
from .domains import Domain
from .errors import InputError
from .jsonio import atomic_write_bytes, dumps, write_json

MANIFEST = "manifest.json"
QUESTIONS = "questions.jsonl"
PAIRS = "pairs.jsonl"
FAILURES = "failures.jsonl"
CACHE = "cache.sqlite"
LOCK = ".lock"
TEMPLATES = "templates"
VALIDATED = "validated"
REJECTED = "rejected.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = "plots"
_PACKAGES = ("dsgen-em", "openai", "pydantic", "jinja2", "rapidfuzz", "torch", "transformers")


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(settings).encode()).hexdigest()[:16]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Manifest(BaseModel):
    dsgen_version: str = __version__
    kind: str = "dsgen-run"
    status: str = "running"  # running | complete | budget_stopped | remote_failed | failed
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    fingerprint: str
    settings: dict[str, Any] = Field(description="the settings that shape the data (fingerprinted)")
    n: int
    config: dict[str, Any] = Field(default_factory=dict, description="the full configuration, never a secret")
    templates: dict[str, dict[str, str]] = Field(default_factory=dict, description="sha256 per template file")
    models: dict[str, str] = Field(default_factory=dict)
    packages: dict[str, str] = Field(default_factory=package_versions)
    counts: dict[str, Any] = Field(default_factory=dict)
    usage: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict, description="status and usage of dsgen validate")


class RunDir:
    def __init__(self, path: Path):
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def read_manifest(self) -> Manifest | None:
        """The manifest, None for a new (absent or empty) folder; InputError for a foreign folder."""
        if not self.path.exists():
            return None
        if not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a folder: choose another --out")
        if not self.manifest_path.is_file():
            if any(p.name != LOCK for p in self.path.iterdir()):
                raise InputError(
                    f"{self.path}: not a dsgen run directory (no {MANIFEST}) and not empty: choose another --out"
                )
            return None
        try:
            manifest = Manifest.model_validate_json(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValidationError, ValueError) as e:
            raise InputError(f"{self.manifest_path}: unreadable manifest ({str(e).splitlines()[0]})") from None
        if manifest.kind != "dsgen-run":
            raise InputError(f"{self.manifest_path}: not a dsgen run manifest")
        return manifest

    def check_resumable(self, existing: Manifest | None, settings: dict[str, Any]) -> None:
        """Refuse to mix data made with different settings in one run directory."""
        if existing is None or existing.fingerprint == fingerprint(settings):
            return
        keys = settings.keys() | existing.settings.keys()
        differ = sorted(k for k in keys if settings.get(k) != existing.settings.get(k))
        detail = []
        for key in differ[:3]:
            was, now_ = existing.settings.get(key), settings.get(key)
            if key == "templates":
                changed = sorted(
                    f
                    for d in (was or {}).keys() | (now_ or {}).keys()
                    for f in ((was or {}).get(d, {}).keys() | (now_ or {}).get(d, {}).keys())
                    if (was or {}).get(d, {}).get(f) != (now_ or {}).get(d, {}).get(f)
                )
                detail.append(f"templates ({', '.join(changed[:4])} changed)")
            else:
                detail.append(f"{key} (run: {json.dumps(was)}, now: {json.dumps(now_)})")
        raise InputError(
            f"{self.path} was built with other settings: {'; '.join(detail)}; "
            "use the run's settings to resume, or another --out"
        )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory for one dsgen process at a time (released if the process dies)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path / LOCK, "w")  # noqa: SIM115 - closed below
        except OSError as e:
            raise InputError(f"--out {self.path}: cannot create the run directory ({e.strerror})") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(f"{self.path}: another dsgen process is using this run directory") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.updated_at = now()
        write_json(self.manifest_path, manifest)

    def copy_templates(self, domains: list[Domain]) -> None:
        """Copy each domain's spec and templates (and _base) so the run never depends on the install."""
        for domain in domains:
            for rel, src in domain.files().items():
                self.copy_in(src, f"{TEMPLATES}/{rel}")

    def copy_in(self, src: Path, rel: str) -> None:
        """Copy a file into the run directory (rewritten only when it differs)."""
        dest = self.path / rel
        data = src.read_bytes()
        if not dest.is_file() or dest.read_bytes() != data:
            atomic_write_bytes(dest, data)

    def clear_stale_temp_files(self) -> None:
        for tmp in self.path.glob(".*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)  # a folder being written when a process died
            else:
                tmp.unlink(missing_ok=True)
