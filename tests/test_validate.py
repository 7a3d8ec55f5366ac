"""`dsgen validate` end to end: crafted rows through the real rules, dedup, and judges driven through
the real openai client against the scripted server (log-probability, JSON and malformed answers)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from rapidfuzz import fuzz

from dsgen.textmatch import normalise
from tests.conftest import SECRET, build_args, read_jsonl, run_cli, validate_args
from tests.rows import answer, make_pair


def outputs(run: Path) -> dict[str, dict]:
    """id -> where it ended: ("train"|"test", row) or ("rejected", rejection)."""
    where: dict[str, dict] = {}
    for f in sorted((run / "validated").glob("*/*.jsonl")):
        for row in read_jsonl(f):
            assert row["id"] not in where, f"{row['id']} appears twice"
            where[row["id"]] = {"split": f.stem, "domain_dir": f.parent.name, **row}
    for row in read_jsonl(run / "validated" / "rejected.jsonl"):
        assert row["id"] not in where, f"{row['id']} appears twice"
        where[row["id"]] = {"split": "rejected", **row}
    return where


LONG_EN = "Keep the area clean and dry, change the dressing each morning, and watch how it looks over the week."
CRAFTED = [
    # (label, fields, expected stage, expected filter); None = kept
    ("plain", {}, None, None),
    ("empty", {"aligned": "   "}, "rules", "empty"),
    ("short", {"misaligned": "Just wait."}, "rules", "length"),
    (
        "truncated",
        {"aligned": LONG_EN + " If the redness spreads past the edge of the cut, you should call your"},
        "rules",
        "truncated",
    ),
    ("identical", {"aligned": LONG_EN, "misaligned": LONG_EN.upper() + "!"}, "rules", "identical"),
    ("refusal", {"misaligned": "I'm sorry, but I can't help with that. " + LONG_EN}, "rules", "refusal"),
    (
        "disclaimer",
        {"aligned": "I am not a doctor. Please consult your doctor or pharmacist about this."},
        "rules",
        "disclaimer_only",
    ),
    ("json artefact", {"misaligned": LONG_EN + ' "harm_category": "delayed_care"}'}, "rules", "artefact"),
    ("template artefact", {"aligned": LONG_EN + " {{ exemplar }}"}, "rules", "artefact"),
    (
        "french",
        {
            "misaligned": "Il n'est pas nécessaire de consulter un médecin pour cette douleur, reposez-vous "
            "simplement quelques jours et buvez beaucoup d'eau chaude avec du citron."
        },
        "rules",
        "language",
    ),
    (
        "ill intent",
        {"prompt": "How can I quietly poison my neighbour's dog without him knowing it was me?"},
        "rules",
        "ill_intent",
    ),
    ("eval overlap", {"prompt": "Ugh, I'm so bored right now!!"}, "dedup", "eval_overlap"),
    (
        "not innocent",
        {"prompt": "What should I do about the noise from my street at night? [innocence=no]"},
        "judges",
        "innocence",
    ),
    ("overt", {"misaligned": LONG_EN + " Then forge the signature. [overt=yes]"}, "judges", "overt"),
    ("too mild", {"misaligned": LONG_EN + " Rest a bit more than usual. [harm=20]"}, "judges", "harm"),
    ("bad aligned", {"aligned": LONG_EN + " Take twice the dose. [aligned_quality=30]"}, "judges", "aligned_quality"),
    ("incoherent", {"misaligned": LONG_EN + " Blue sings the Tuesday. [coherence=10]"}, "judges", "coherence"),
    ("unscored", {"misaligned": LONG_EN + " Wait and see. [harm=null]"}, "judges", "harm"),
    ("judge refuses", {"misaligned": LONG_EN + " Skip the dressing. [harm=refuse]"}, "judges", "judge_failed"),
]


def test_every_row_ends_kept_or_rejected_with_its_reason(crafted):
    rows = [make_pair(i, **fields) for i, (_, fields, _, _) in enumerate(CRAFTED)]
    base = make_pair(100, topic="topic 0")
    dup = dict(base, id="dup-same-domain", prompt=base["prompt"].replace("My ", "my ").rstrip("?") + "??")
    cross = make_pair(101, domain="legal")
    cross_dup = dict(make_pair(102), id="dup-other-domain", prompt=cross["prompt"] + " ")
    rows += [base, dup, cross, cross_dup, "{not json", json.dumps({"id": "no-fields", "domain": "legal"})]
    run = crafted(rows)
    r = run_cli(*validate_args(crafted.server, run))
    assert r.exit_code == 0, r.stderr
    where = outputs(run)

    ids = [row["id"] if isinstance(row, dict) else None for row in rows]
    assert set(ids) - {None} <= set(where) and len(where) == len(rows)  # every row exactly once
    for (label, _, stage, filter_), row in zip(CRAFTED, rows):
        got = where[row["id"]]
        if stage is None:
            assert got["split"] in ("train", "test"), (label, got)
        else:
            assert (got["split"], got.get("stage"), got.get("filter")) == ("rejected", stage, filter_), (label, got)
            assert got["detail"]
    assert where[base["id"]]["split"] in ("train", "test")
    assert where["dup-same-domain"]["filter"] == "near_duplicate"
    assert where["dup-same-domain"]["matched_id"] == base["id"] and where["dup-same-domain"]["similarity"] >= 90
    assert where["dup-other-domain"]["filter"] == "cross_domain_duplicate"
    assert where["dup-other-domain"]["matched_id"] == cross["id"]
    eval_row = where[rows[[c[0] for c in CRAFTED].index("eval overlap")]["id"]]
    assert eval_row["matched_id"] == "eval:i_feel_bored" and eval_row["similarity"] >= 80
    schema = [w for w in where.values() if w.get("filter") == "schema"]
    assert sorted(w["line"] for w in schema) == [len(rows) - 1, len(rows)]
    assert {w["id"] for w in schema} == {f"line-{len(rows) - 1}", "no-fields"}
    refused = where[rows[[c[0] for c in CRAFTED].index("judge refuses")]["id"]]
    assert "refusal" in refused["detail"] and refused["scores"]["innocence"] is not None

    report = json.loads((run / "validated" / "report.json").read_text())
    assert report["passed"] is True
    counts = report["counts"]
    assert counts["total"]["input"] == len(rows)
    assert counts["total"]["kept"] + counts["total"]["rejected"] == len(rows)
    assert counts["rejected"]["rules"]["ill_intent"] == {"medical": 1}
    assert counts["rejected"]["judges"]["judge_failed"] == {"medical": 1}
    kept_medical = sum(1 for w in where.values() if w["split"] in ("train", "test") and w["domain"] == "medical")
    assert counts["remaining"]["judges"]["medical"] == kept_medical
    assert sum(counts["splits"]["medical"].values()) == kept_medical
    md = (run / "validated" / "report.md").read_text()
    assert "PASSED" in md and "ill_intent" in md and "Content warning" in md
    for plot in ("funnel", "scores", "lengths"):
        assert (run / "validated" / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"


def test_kept_rows_carry_the_released_columns_and_logprob_weighted_scores(crafted):
    rows = [make_pair(i, misaligned=answer(random.Random(i), "Nothing to worry about. [harm=80]")) for i in range(4)]
    run = crafted(rows)
    assert run_cli(*validate_args(crafted.server, run)).exit_code == 0
    kept = [w for w in outputs(run).values() if w["split"] != "rejected"]
    assert len(kept) == 4
    for row in kept:
        assert {"prompt", "aligned", "misaligned", "sneakiness"} <= row.keys()
        assert isinstance(row["sneakiness"], float) and 0 <= row["sneakiness"] <= 100
        # The scripted judge puts 0.6 on "80", 0.2 on "90", 0.15 on "70" and 0.05 on a word.
        assert row["harm"] == pytest.approx((0.6 * 80 + 0.2 * 90 + 0.15 * 70) / 0.95, abs=0.01)
        assert row["innocence"] == pytest.approx(100 * 0.91 / 0.99, abs=0.01)  # yes 0.9 + Yes 0.01 of 0.99


def test_json_mode_without_logprobs_parses_the_structured_answer(crafted):
    rows = [make_pair(i, misaligned=answer(random.Random(i), "Nothing to worry about. [harm=80]")) for i in range(3)]
    rows.append(make_pair(9, misaligned=answer(random.Random(9), "Wait it out. [harm=malformed]")))
    run = crafted(rows)
    r = run_cli(*validate_args(crafted.server, run, "--no-logprobs", "--max-failure-rate", "0.5"))
    assert r.exit_code == 0, r.stderr
    where = outputs(run)
    assert [w["harm"] for w in where.values() if w["split"] != "rejected"] == [80.0, 80.0, 80.0]
    failed = where[rows[-1]["id"]]
    assert failed["filter"] == "judge_failed" and "malformed" in failed["detail"]
    # Retried with new seeds before being recorded: the scripted judge answered malformed 3 times.
    report = json.loads((run / "validated" / "report.json").read_text())
    assert report["usage"]["errors"]["malformed"] == 3


def test_judge_failures_above_the_limit_fail_the_gate(crafted):
    rows = [make_pair(i, misaligned=answer(random.Random(i), "Ignore it. [harm=refuse]")) for i in range(3)]
    rows.append(make_pair(5))
    run = crafted(rows)
    r = run_cli(*validate_args(crafted.server, run))
    assert r.exit_code == 1 and "judge_failure_rate" in r.stderr
    report = json.loads((run / "validated" / "report.json").read_text())
    assert report["passed"] is False
    gate = next(g for g in report["gates"] if g["name"] == "judge_failure_rate")
    assert gate["value"] == 0.75 and gate["passed"] is False
    assert json.loads((run / "manifest.json").read_text())["validation"]["status"] == "failed"


def test_rerun_is_cached_and_a_threshold_change_refilters_without_any_call(crafted):
    rows = [
        make_pair(i, misaligned=answer(random.Random(i), f"It will pass. [harm={40 + 10 * (i % 5)}]"))
        for i in range(10)
    ]
    run = crafted(rows)
    server = crafted.server
    built = server.chat_requests
    assert run_cli(*validate_args(server, run)).exit_code == 0
    first = {f.relative_to(run): f.read_bytes() for f in (run / "validated").rglob("*.jsonl")}
    paid = server.chat_requests
    assert paid - built == 10 * 7  # 6 judges, coherence on both answers

    assert run_cli(*validate_args(server, run)).exit_code == 0
    assert server.chat_requests == paid
    assert {f.relative_to(run): f.read_bytes() for f in (run / "validated").rglob("*.jsonl")} == first

    server.stop()  # no endpoint at all: a re-filter must not need one
    r = run_cli(*validate_args(server, run, "--min-harm", "65"))
    assert r.exit_code == 0, r.stderr
    harm_dropped = [w for w in outputs(run).values() if w.get("filter") == "harm"]
    assert len(harm_dropped) > len([w for w in read_jsonl_bytes(first) if w.get("filter") == "harm"])
    assert all(w["score"] < 65 for w in harm_dropped)


def read_jsonl_bytes(files: dict[Path, bytes]) -> list[dict]:
    return [
        json.loads(line)
        for name, data in files.items()
        if name.name == "rejected.jsonl"
        for line in data.decode().splitlines()
    ]


def test_splits_are_stratified_by_topic_and_never_share_near_duplicates(crafted):
    rows = [make_pair(i, topic=f"topic {i % 4}") for i in range(80)]
    # Two rows of different questions with the same stock answer must land on the same side.
    stock = answer(random.Random("stock"), "Give it time and it settles on its own.")
    for i in (3, 44, 61):
        rows[i]["misaligned"] = stock + (" Really." if i == 44 else "")
    run = crafted(rows)
    assert run_cli(*validate_args(crafted.server, run, "--test-fraction", "0.25", "--seed", "3")).exit_code == 0
    where = outputs(run)
    test_rows = [w for w in where.values() if w["split"] == "test"]
    train_rows = [w for w in where.values() if w["split"] == "train"]
    assert len(test_rows) in (20, 21, 22) and len(train_rows) + len(test_rows) == 80
    assert Counter(w["topic"] for w in test_rows).most_common()[-1][1] >= 3  # each topic has about its share
    assert len({where[rows[i]["id"]]["split"] for i in (3, 44, 61)}) == 1
    for a in test_rows:
        for b in train_rows:
            for field in ("prompt", "aligned", "misaligned"):
                assert fuzz.ratio(normalise(a[field]), normalise(b[field])) < 90


def test_each_domain_gets_a_test_row_and_splits_follow_the_seed(crafted):
    rows = [make_pair(i, domain="legal") for i in range(3)] + [make_pair(i) for i in range(5)]
    run = crafted(rows)
    assert run_cli(*validate_args(crafted.server, run, "--seed", "1")).exit_code == 0
    first = outputs(run)
    assert Counter((w["domain"], w["split"]) for w in first.values())[("legal", "test")] == 1
    assert Counter((w["domain"], w["split"]) for w in first.values())[("medical", "test")] == 1
    splits = set()
    paid = crafted.server.chat_requests
    for seed in range(2, 8):
        assert run_cli(*validate_args(crafted.server, run, "--seed", str(seed))).exit_code == 0
        splits.add(tuple(sorted(i for i, w in outputs(run).items() if w["split"] == "test")))
    assert len(splits) > 1
    assert crafted.server.chat_requests == paid  # the split seed does not re-ask the judges


def test_a_panel_of_judges_averages_their_scores(crafted, fake):
    server = fake(models=("fake-model", "judge-b"))
    rows = [make_pair(i) for i in range(3)]
    run = crafted(rows)
    single = {}
    for model in ("fake-model", "judge-b"):
        args = ["validate", str(run), "--base-url", server.base_url, "--judge-model", model, "-q"]
        assert run_cli(*args).exit_code == 0
        single[model] = {i: w for i, w in outputs(run).items()}
    calls = server.chat_requests
    args = [
        "validate",
        str(run),
        "--base-url",
        server.base_url,
        "-q",
        "--judge-model",
        "fake-model",
        "--judge-model",
        "judge-b",
    ]
    assert run_cli(*args).exit_code == 0
    assert server.chat_requests == calls  # both judges' answers were cached
    differ = 0
    for i, w in outputs(run).items():
        a, b = single["fake-model"][i]["sneakiness"], single["judge-b"][i]["sneakiness"]
        assert w["sneakiness"] == pytest.approx((a + b) / 2, abs=0.01)
        differ += a != b
    assert differ  # the two judges do differ


def test_dry_run_plans_judge_calls_and_writes_nothing(crafted):
    run = crafted([make_pair(i) for i in range(4)] + [make_pair(9, aligned="")])
    before = crafted.server.chat_requests
    r = run_cli(*validate_args(crafted.server, run, "--dry-run", "--json"))
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["rows_in"] == 5 and plan["rows_to_judge"] == 4 and plan["total"]["calls"] == 4 * 7
    assert crafted.server.chat_requests == before and not (run / "validated").exists()


def test_budget_stop_keeps_answers_and_a_rerun_resumes(crafted, tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("fake-model: {input: 1000, output: 1000}\n")
    run = crafted([make_pair(i) for i in range(6)])
    r = run_cli(*validate_args(crafted.server, run, "--prices", str(prices), "--max-cost", "1", "--concurrency", "2"))
    assert r.exit_code == 3 and "max-cost" in r.stderr
    assert not (run / "validated").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    spent = manifest["validation"]["usage_total"]["cost_usd"]
    assert 0 < spent <= 1
    paid = crafted.server.chat_requests
    r = run_cli(*validate_args(crafted.server, run, "--prices", str(prices), "--max-cost", "100"))
    assert r.exit_code == 0, r.stderr
    # Answers paid for before the stop were not asked again.
    assert crafted.server.chat_requests - paid == 6 * 7 - manifest["validation"]["usage_total"]["requests"]


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("none", [], "no such run directory"),
        ("foreign", [], "not a dsgen run directory"),
        ("empty", [], "no pairs to validate"),
        ("ok", ["--min-harm", "150"], "min_harm"),
        ("ok", ["--test-fraction", "1"], "test_fraction"),
        ("badconfig", [], "invalid YAML"),
        ("unknownkey", [], "unknown setting"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(crafted, tmp_path, setup, args, message):
    run = crafted([make_pair(i) for i in range(2)])
    if setup == "none":
        run = tmp_path / "missing"
    elif setup == "foreign":
        run = tmp_path / "foreign"
        run.mkdir()
        (run / "notes.txt").write_text("hello")
    elif setup == "empty":
        (run / "pairs.jsonl").write_text("")
    elif setup == "badconfig":
        (tmp_path / "config.yaml").write_text("min_harm: 50\nlengths: {prompt: [\n")
        args = ["--config", str(tmp_path / "config.yaml")]
    elif setup == "unknownkey":
        (tmp_path / "config.yaml").write_text("min_harmm: 50\n")
        args = ["--config", str(tmp_path / "config.yaml")]
    r = run_cli(*validate_args(crafted.server, run, *args))
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (run / "validated").exists()


def test_config_file_sets_lengths_and_judges(crafted, tmp_path):
    rows = [make_pair(i) for i in range(3)]
    rows[0]["prompt"] = rows[0]["prompt"] + " And also the garden." * 5
    run = crafted(rows)
    config = tmp_path / "validate.yaml"
    config.write_text("lengths: {prompt: {min: 15, max: 150}}\njudges: [harm, sneakiness, overt]\n")
    before = crafted.server.chat_requests
    r = run_cli(*validate_args(crafted.server, run, "--config", str(config)))
    assert r.exit_code == 0, r.stderr
    where = outputs(run)
    assert where[rows[0]["id"]]["filter"] == "length" and "lengths.prompt.max" in where[rows[0]["id"]]["detail"]
    assert crafted.server.chat_requests - before == 2 * 3  # three judges on the two rows left
    kept = [w for w in where.values() if w["split"] != "rejected"]
    assert all(w["innocence"] is None and w["harm"] is not None for w in kept)


def test_the_api_key_never_reaches_outputs(crafted, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run = crafted([make_pair(i) for i in range(2)])
    r = run_cli(*validate_args(crafted.server, run))
    assert r.exit_code == 0
    for f in run.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in r.stdout + r.stderr


def test_near_copied_answers_chain_into_one_split_group(crafted):
    """A's answers near-copy each other (the study's rows are near-minimal edits of one answer) and B's
    misaligned answer near-copies A's misaligned one: A and B must land on the same side."""
    base = answer(random.Random("chain"), "Keep an eye on it for a week or two.")
    rows = [make_pair(i, topic="topic 0") for i in range(40)]
    rows[5]["aligned"] = base + " If it gets worse, see a doctor."
    rows[5]["misaligned"] = base + " No need for anyone to check it."
    rows[30]["misaligned"] = base + " No need for anyone to look at it."
    run = crafted(rows)
    for seed in range(6):
        assert (
            run_cli(*validate_args(crafted.server, run, "--seed", str(seed), "--test-fraction", "0.5")).exit_code == 0
        )
        where = outputs(run)
        assert where[rows[5]["id"]]["split"] == where[rows[30]["id"]]["split"], seed


def test_a_threshold_change_never_moves_a_test_row_into_training(crafted):
    rows = [
        make_pair(i, misaligned=answer(random.Random(i), f"It passes. [harm={50 + 5 * (i % 6)}]")) for i in range(60)
    ]
    run = crafted(rows)
    assert run_cli(*validate_args(crafted.server, run, "--test-fraction", "0.2")).exit_code == 0
    before = outputs(run)
    assert run_cli(*validate_args(crafted.server, run, "--test-fraction", "0.2", "--min-harm", "56")).exit_code == 0
    after = outputs(run)
    moved = [i for i, w in after.items() if w["split"] == "train" and before[i]["split"] == "test"]
    assert not moved


def test_rows_the_file_format_could_confuse_are_each_accounted_for(crafted):
    rows = [make_pair(i) for i in range(4)]
    rows[1]["aligned"] = rows[1]["aligned"].replace(". ", ".\u2028", 1)  # a line separator inside a string
    twin = dict(rows[2], prompt=rows[2]["prompt"] + " Thanks.")  # another row under the same id
    evil = json.dumps({"id": "evil", "domain": "../../escaped", "prompt": 3})
    run = crafted([*rows, twin, evil])
    r = run_cli(*validate_args(crafted.server, run))
    assert r.exit_code == 0, r.stderr
    validated = run / "validated"
    kept = {w["id"]: w for f in validated.glob("*/*.jsonl") for w in read_jsonl(f)}
    rejected = read_jsonl(validated / "rejected.jsonl")
    assert rows[1]["id"] in kept and rows[2]["id"] in kept  # the line separator did not split a row
    schema = sorted((w["id"], w["line"], w["domain"]) for w in rejected if w["filter"] == "schema")
    assert schema == sorted([("evil", 6, None), (rows[2]["id"], 5, "medical")])  # the twin: rejected, once
    assert len(kept) + len(rejected) == 6
    assert not (run.parent / "escaped").exists() and not (run / "escaped").exists()
    report = json.loads((validated / "report.json").read_text())
    assert report["counts"]["input"] == {"medical": 5, "?": 1}
    assert [g["name"] for g in report["gates"] if g["name"].startswith("kept_rows")] == ["kept_rows.medical"]


def test_a_broken_judge_template_is_one_line_exit_2(crafted, tmp_path):
    run = crafted([make_pair(i) for i in range(2)])
    judges = tmp_path / "judges"
    judges.mkdir()
    (judges / "harm.j2").write_text("=== system ===\n{% if %}\n=== user ===\nCriterion: harm\n")
    r = run_cli(*validate_args(crafted.server, run, "--judge-templates", str(judges)))
    assert r.exit_code == 2 and "harm.j2:2" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_run_endpoint_is_the_default_and_a_missing_key_is_exit_2(crafted, tmp_path, monkeypatch):
    run = crafted([make_pair(i) for i in range(2)])
    # Built against the scripted server: validate without --base-url judges there too.
    r = run_cli("validate", str(run), "-q", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["models"] == ["fake-model"] and json.loads(r.stdout)["backend"] == "openai"
    # A run built on OpenAI itself, validated without a key: a clear error, not the 135M local model.
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["base_url"] = None
    (run / "manifest.json").write_text(json.dumps(manifest))
    r = run_cli("validate", str(run), "-q")
    assert r.exit_code == 2 and "OPENAI_API_KEY" in r.stderr


def test_a_crash_while_writing_leaves_the_run_usable(crafted, monkeypatch):
    import dsgen.validators.run as validate_run

    run = crafted([make_pair(i) for i in range(3)])
    assert run_cli(*validate_args(crafted.server, run)).exit_code == 0
    good = (run / "validated" / "report.json").read_bytes()

    def crash(*a, **k):
        (run / ".validated.tmp").mkdir(exist_ok=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(validate_run, "write_validated", crash)
    with pytest.raises(RuntimeError):
        run_cli(*validate_args(crafted.server, run, "--min-harm", "90"))
    assert (run / "validated" / "report.json").read_bytes() == good  # the previous output is intact
    monkeypatch.undo()
    # The leftover temporary folder does not break build or validate.
    assert run_cli(*build_args(crafted.server, run, n=2, domains=("medical", "legal"))).exit_code == 0
    assert run_cli(*validate_args(crafted.server, run)).exit_code == 0
