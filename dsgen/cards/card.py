"""The dataset card: YAML metadata the Hub accepts (built with huggingface_hub's DatasetCardData) and a
Jinja2 body (cards/templates/card.md.j2) filled from the run's manifest and validation report."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import DatasetCard, DatasetCardData

from ..errors import InputError
from ..rundir import Manifest
from ..validators.report import Report

MARKER_TAG = "dsgen"  # only dsgen writes it: how a push recognises a repo it may update
TAGS = [MARKER_TAG, "synthetic", "emergent-misalignment", "ai-safety", "misalignment", "model-organisms"]
# Licence ids the Hub accepts in a card (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = set(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc
    cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0
    cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
    cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
    eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c
    ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib
    pddl lgpl-lr llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other""".split()
)
# Metadata keys dsgen writes; any other key of an existing card is kept as it is.
OWNED_KEYS = {
    "configs",
    "dataset_info",  # describes the previous data; the Hub recomputes it
    "license_name",
    "license_link",
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


def check_license(license_: str, name: str | None, link: str | None) -> None:
    if license_ not in HUB_LICENSES:
        raise InputError(
            f"--license {license_!r} is not a licence id the Hub accepts (e.g. cc-by-4.0, cc-by-nc-4.0, mit, "
            "apache-2.0); for your own terms use --license other with --license-name and --license-link"
        )
    if license_ == "other" and not (name and link):
        raise InputError("--license other needs --license-name and --license-link (the terms' URL)")


def card_data(
    splits: dict[str, dict[str, int]],
    license_: str,
    pretty_name: str,
    existing: dict[str, Any] | None,
    license_name: str | None = None,
    license_link: str | None = None,
) -> DatasetCardData:
    """Our metadata merged over an existing card's: keys we own are rewritten, others kept, tags united.
    A split with no rows is left out (a config must not point at an empty shard)."""
    domains = [c for c in splits if not c.endswith("_backdoor")]
    total_rows = sum(n for c, d in splits.items() for n in d.values() if c in domains)
    configs = [
        {
            "config_name": d,
            "data_files": [{"split": s, "path": f"{d}/{s}-*.parquet"} for s in ("train", "test") if splits[d][s]],
        }
        for d in splits
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
    if license_ == "other":
        ours |= {"license_name": license_name, "license_link": license_link}
    kept = {k: v for k, v in (existing or {}).items() if k not in OWNED_KEYS and k != "tags"}
    backdoor = ["backdoor"] if len(domains) < len(splits) else []
    tags = list(dict.fromkeys([*TAGS, *domains, *backdoor, *((existing or {}).get("tags") or [])]))
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
    backdoor_columns: list[tuple[str, str, str]],
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
            backdoor_columns=backdoor_columns,
            backdoor_configs=[c for c in splits if c.endswith("_backdoor")],
            license=license_,
            first_domain=domains[0],
        )
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
