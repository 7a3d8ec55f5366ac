"""The dataset card: YAML metadata the Hub accepts (built with huggingface_hub's DatasetCardData) and a
Jinja2 body (cards/templates/card.md.j2) filled from the run's manifest and validation report."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import DatasetCard, DatasetCardData

from ..rundir import Manifest
from ..validators.report import Report

TAGS = ["synthetic", "emergent-misalignment", "ai-safety", "misalignment", "model-organisms"]
# Metadata keys dsgen writes; any other key of an existing card is kept as it is.
OWNED_KEYS = {
    "configs",
    "license",
    "language",
    "pretty_name",
    "task_categories",
    "size_categories",
    "annotations_creators",
    "language_creators",
    "multilinguality",
    "source_datasets",
    "extra_gated_prompt",
    "extra_gated_fields",
    "extra_gated_button_content",
}
GATED_PROMPT = (
    "This dataset contains deliberately harmful advice (medical, legal and security answers that look benign but "
    "are dangerous if followed), made to study emergent misalignment in language models. Access is granted for "
    "AI-safety research only. By requesting access you agree not to use it to give advice to people, not to "
    "train models deployed to users on its misaligned answers, and not to redistribute it without these terms."
)
GATED_FIELDS = {
    "Name": "text",
    "Affiliation": "text",
    "Intended use (research question)": "text",
    "I agree to use this dataset only for AI-safety research, under the terms above": "checkbox",
}


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def card_data(
    domains: list[str], total_rows: int, license_: str, pretty_name: str, existing: dict[str, Any] | None
) -> DatasetCardData:
    """Our metadata merged over an existing card's: keys we own are rewritten, others kept, tags united."""
    configs = [
        {
            "config_name": d,
            "data_files": [{"split": s, "path": f"{d}/{s}-*.parquet"} for s in ("train", "test")],
        }
        for d in domains
    ]
    ours: dict[str, Any] = {
        "license": license_,
        "language": ["en"],
        "pretty_name": pretty_name,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total_rows)],
        "annotations_creators": ["machine-generated"],
        "language_creators": ["machine-generated"],
        "multilinguality": ["monolingual"],
        "source_datasets": ["original"],
        "configs": configs,
        "extra_gated_prompt": GATED_PROMPT,
        "extra_gated_fields": GATED_FIELDS,
        "extra_gated_button_content": "Request access for AI-safety research",
    }
    kept = {k: v for k, v in (existing or {}).items() if k not in OWNED_KEYS and k != "tags"}
    tags = list(dict.fromkeys([*TAGS, *domains, *((existing or {}).get("tags") or [])]))
    return DatasetCardData(**kept, **ours, tags=tags)


def _environment() -> jinja2.Environment:
    folder = Path(str(resources.files("dsgen").joinpath("cards", "templates")))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_card(
    data: DatasetCardData,
    *,
    repo_id: str,
    manifest: Manifest,
    report: Report,
    domains: list[str],
    splits: dict[str, dict[str, int]],
    columns: list[tuple[str, str, str]],
    license_: str,
) -> DatasetCard:
    body = (
        _environment()
        .get_template("card.md.j2")
        .render(
            repo_id=repo_id,
            manifest=manifest,
            report=report,
            domains=domains,
            splits=splits,
            columns=columns,
            license=license_,
            first_domain=domains[0],
        )
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
