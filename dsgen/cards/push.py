"""`dsgen push`: check the run may be published, stage its Hub folder, upload it (or only stage it)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..rundir import RunDir
from .card import MARKER_TAG, check_license
from .stage import read_validated, stage
from .upload import Gated, check_repo_id, hub_card_metadata, hub_token, repo_files, stale_patterns, tag_exists, upload

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


def check_not_foreign(repo_id: str, metadata: dict[str, Any] | None, files: list[str], force: bool) -> None:
    """A repo that holds something dsgen did not publish (its card lacks dsgen's tag) is not written to
    unless forced."""
    content = [f for f in files if f not in (".gitattributes", "README.md")]
    ours = MARKER_TAG in ((metadata or {}).get("tags") or [])
    if force or ours or not (content or metadata):
        return
    held = ", ".join(content[:3]) or "a card"
    raise InputError(
        f"{repo_id} already holds data not published by dsgen ({held}); push to another repo, "
        "or pass --force to add this dataset to it"
    )


def previous_domains(metadata: dict[str, Any] | None) -> list[str]:
    """The configs an earlier dsgen push published (their shards are replaced)."""
    if not metadata or MARKER_TAG not in (metadata.get("tags") or []):
        return []
    return [str(c["config_name"]) for c in metadata.get("configs") or [] if isinstance(c, dict) and "config_name" in c]


def run_push(
    run_path: Path,
    repo_id: str,
    *,
    stage_only: Path | None = None,
    license_: str = "cc-by-4.0",
    license_name: str | None = None,
    license_link: str | None = None,
    public: bool = False,
    gated: Gated = "manual",
    tag: str | None = None,
    pretty_name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> PushOutcome:
    run = RunDir(run_path)
    check_repo_id(repo_id)
    check_license(license_, license_name, license_link)
    notes = check_publishable(run, force)
    private = not public
    card = {"license_name": license_name, "license_link": license_link}
    # With a token, what is staged (or listed) merges the Hub card's metadata, as the push would.
    token = hub_token() if not (dry_run or stage_only) else optional_token()
    metadata = hub_card_metadata(repo_id, token) if token else None
    if dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            staged = stage(run, Path(tmp) / "hub", repo_id, license_, pretty_name, hub_metadata=metadata, **card)
            return PushOutcome(repo_id, None, staged.files, False, private=private, gated=gated, tag=tag, notes=notes)
    if stage_only is not None:
        staged = stage(run, stage_only, repo_id, license_, pretty_name, hub_metadata=metadata, **card)
        return PushOutcome(repo_id, str(stage_only), staged.files, False, private=private, gated=gated, notes=notes)
    assert token is not None
    check_not_foreign(repo_id, metadata, repo_files(repo_id, token), force)
    if tag and tag_exists(repo_id, tag, token):
        raise InputError(f"tag {tag} already exists on {repo_id}: choose another --tag (nothing was uploaded)")
    staged = stage(run, run.file(HUB_FOLDER), repo_id, license_, pretty_name, hub_metadata=metadata, **card)
    stale = stale_patterns([*previous_domains(metadata), *staged.domains])
    result = upload(staged.folder, repo_id, token, private=private, gated=gated, tag=tag, stale=stale)
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


def optional_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()
