"""`dsgen push`: check the run may be published, stage its Hub folder, upload it (or only stage it)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..rundir import RunDir
from .card import TAGS
from .stage import read_validated, stage
from .upload import Gated, check_repo_id, hub_card_metadata, hub_token, upload

HUB_FOLDER = "hub"


@dataclass
class PushOutcome:
    repo_id: str
    staged: str | None
    files: list[str]
    uploaded: bool
    url: str | None = None
    commit: str | None = None
    private: bool = True
    gated: Gated = "manual"
    tag: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_publishable(run: RunDir, force: bool) -> list[str]:
    """Refuse a run that failed validation (or was never validated) unless forced; say why."""
    _, report, _ = read_validated(run)  # InputError when never validated
    notes = []
    if not report.passed:
        failing = ", ".join(g.name for g in report.gates if not g.passed and not g.advisory)
        if not force:
            raise InputError(
                f"{run.path} failed validation (gates: {failing}); fix the data or thresholds and re-validate, "
                "or pass --force to publish it anyway"
            )
        notes.append(f"published with --force although validation failed (gates: {failing})")
    if report.reference is None:
        notes.append("no reference finetune-and-eval run was made; the card says so")
    return notes


def check_card_conflict(repo_id: str, metadata: dict[str, Any] | None, force: bool) -> None:
    """A repo whose card describes a dataset dsgen did not make is not overwritten silently."""
    if not metadata or force:
        return
    ours = set(TAGS) & set(metadata.get("tags") or [])
    if metadata.get("configs") and not ours:
        names = ", ".join(str(c.get("config_name")) for c in metadata["configs"] if isinstance(c, dict))
        raise InputError(
            f"{repo_id} already holds a dataset not made by dsgen (its card has configs: {names}); "
            "push to another repo, or pass --force to replace its data"
        )


def run_push(
    run_path: Path,
    repo_id: str,
    *,
    stage_only: Path | None = None,
    license_: str = "cc-by-4.0",
    public: bool = False,
    gated: Gated = "manual",
    tag: str | None = None,
    pretty_name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> PushOutcome:
    run = RunDir(run_path)
    check_repo_id(repo_id)
    notes = check_publishable(run, force)
    private = not public
    if dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            staged = stage(run, Path(tmp) / "hub", repo_id, license_, pretty_name)
            return PushOutcome(repo_id, None, staged.files, False, private=private, gated=gated, tag=tag, notes=notes)
    if stage_only is not None:
        staged = stage(run, stage_only, repo_id, license_, pretty_name)
        return PushOutcome(repo_id, str(stage_only), staged.files, False, private=private, gated=gated, notes=notes)
    token = hub_token()
    metadata = hub_card_metadata(repo_id, token)
    check_card_conflict(repo_id, metadata, force)
    staged = stage(run, run.file(HUB_FOLDER), repo_id, license_, pretty_name, hub_metadata=metadata)
    result = upload(staged.folder, repo_id, token, private=private, gated=gated, tag=tag)
    return PushOutcome(
        repo_id,
        str(staged.folder),
        staged.files,
        True,
        url=result.url,
        commit=result.commit,
        private=private,
        gated=gated,
        tag=tag,
        notes=notes,
    )
