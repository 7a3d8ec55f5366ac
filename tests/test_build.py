"""`dsgen build` end to end through the real openai client against the scripted server."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import SECRET, build_args, dsgen_subprocess, read_jsonl, run_cli

RUN_FILES = ("questions.jsonl", "pairs.jsonl", "failures.jsonl")


def snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in RUN_FILES}


def test_build_writes_pairs_questions_and_manifest(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = fake(api_key=SECRET)
    out = tmp_path / "run"
    r = run_cli(*build_args(server, out, n=7, domains=("medical", "legal")), "--concurrency", "4")
    assert r.exit_code == 0, r.stderr

    pairs = read_jsonl(out / "pairs.jsonl")
    assert Counter(p["domain"] for p in pairs) == {"medical": 7, "legal": 7}
    assert len({p["id"] for p in pairs}) == 14
    for p in pairs:
        assert p["prompt"] and p["aligned"] and p["misaligned"] and p["aligned"] != p["misaligned"]
        assert p["pair_mode"] == "joint" and p["model"] == "fake-model"
    questions = {q["id"]: q for q in read_jsonl(out / "questions.jsonl")}
    assert all(p["question_id"] in questions for p in pairs)
    # Pairs are those of the first questions, in question order.
    order = [q["id"] for q in questions.values() if q["domain"] == "medical"]
    assert [p["question_id"] for p in pairs if p["domain"] == "medical"] == order[:7]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["pairs"] == 14 and manifest["counts"]["shortfall"] == 0
    assert manifest["usage"]["last_invocation"]["requests"] == server.chat_requests
    assert set(manifest["templates"]) == {"medical", "legal"}
    assert (out / "templates" / "medical" / "spec.yaml").is_file()
    assert (out / "templates" / "_base" / "pair.json".replace("json", "j2")).is_file()
    # The key never reaches any file of the run, nor the output.
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in r.stdout + r.stderr


def test_rerun_is_served_from_cache_and_byte_identical(fake, tmp_path):
    server = fake()
    out = tmp_path / "run"
    assert run_cli(*build_args(server, out, n=5)).exit_code == 0
    first, paid = snapshot(out), server.chat_requests
    r = run_cli(*build_args(server, out, n=5), "--json")
    assert r.exit_code == 0
    assert server.chat_requests == paid  # nothing paid twice
    assert snapshot(out) == first
    usage = json.loads(r.stdout)["usage"]["last_invocation"]
    assert usage["requests"] == 0 and usage["cache_hits"] > 0


def test_larger_n_extends_the_run(fake, tmp_path):
    server = fake()
    out = tmp_path / "run"
    assert run_cli(*build_args(server, out, n=4)).exit_code == 0
    before = read_jsonl(out / "pairs.jsonl")
    assert run_cli(*build_args(server, out, n=9)).exit_code == 0
    after = read_jsonl(out / "pairs.jsonl")
    assert len(after) == 9 and after[:4] == before


def test_other_settings_on_existing_run_exit_2_and_keep_files(fake, tmp_path):
    server = fake()
    out = tmp_path / "run"
    assert run_cli(*build_args(server, out, n=3)).exit_code == 0
    before = snapshot(out)
    r = run_cli(*build_args(server, out, "--seed", "7", n=3))
    assert r.exit_code == 2
    assert "seed" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert snapshot(out) == before


def test_faults_are_retried_and_every_row_is_accounted_for(fake, tmp_path):
    rates = {"rate_limit": 0.2, "server_error": 0.1, "malformed": 0.15, "refusal": 0.1}
    server = fake(rates=rates)
    out = tmp_path / "run"
    r = run_cli(*build_args(server, out, "--concurrency", "8", n=60, domains=("security",)), "--json")
    assert r.exit_code == 0, r.stderr
    assert server.faults["rate_limit"] > 0 and server.faults["server_error"] > 0
    manifest = json.loads(r.stdout)
    counts = manifest["counts"]["per_domain"]["security"]
    pairs = read_jsonl(out / "pairs.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert len(pairs) == 60
    assert {f["reason"] for f in failures} <= {"malformed", "refusal"}
    assert all(f["attempts"] == 3 and f["detail"] for f in failures)
    pair_failures = {f["question_id"] for f in failures if f["stage"] == "pair"}
    # Every question sent for a pair ended as a pair or as a recorded failure.
    assert counts["pair_attempts"] == len(pairs) + len(pair_failures)
    question_failures = [f for f in failures if f["stage"] == "questions"]
    calls_with_questions = {q["call"] for q in read_jsonl(out / "questions.jsonl")}
    assert len(calls_with_questions) + len(question_failures) == counts["question_calls"]
    errors = manifest["usage"]["last_invocation"]["errors"]
    assert errors["rate_limited"] == server.faults["rate_limit"]
    assert errors["server_error"] == server.faults["server_error"]
    assert manifest["usage"]["last_invocation"]["requests"] == server.chat_requests


def test_failures_above_the_rate_exit_1_with_the_run_kept(fake, tmp_path):
    server = fake(rates={"refusal": 1.0})
    out = tmp_path / "run"
    r = run_cli(*build_args(server, out, n=3))
    assert r.exit_code == 1
    assert "failed" in r.stderr and "max-failure-rate" in r.stderr
    failures = read_jsonl(out / "failures.jsonl")
    assert failures and {f["reason"] for f in failures} == {"refusal"}
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_dry_run_calls_and_writes_nothing(fake, tmp_path):
    server = fake()
    out = tmp_path / "run"
    r = run_cli(
        *build_args(server, out, n=50, domains=("medical", "legal")), "--dry-run", "--json", "--model", "gpt-4.1-mini"
    )
    assert r.exit_code == 0
    plan = json.loads(r.stdout)
    assert plan["total"]["calls"] == 2 * (13 + 50)  # 25% more questions, 5 a call; one call per pair
    assert plan["total"]["cost_usd"] > 0
    assert server.requests == 0
    assert not out.exists()


def test_budget_stop_then_resume_matches_uninterrupted_run(fake, tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("fake-model: {input: 100.0, output: 100.0}\n")
    server = fake()
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run_cli(*build_args(server, ref, "--prices", str(prices), n=6)).exit_code == 0
    total = json.loads((ref / "manifest.json").read_text())["usage"]["total"]["cost_usd"]

    fresh = fake()
    # One call in flight, so the budget is reserved for one worst case (its max tokens) at a time.
    budget = total * 0.6
    limited = build_args(fresh, out, "--prices", str(prices), "--max-cost", f"{budget:.4f}", "--concurrency", "1", n=6)
    r = run_cli(*limited)
    assert r.exit_code == 3, r.stderr
    assert "max-cost" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "budget_stopped"
    assert 0 < manifest["usage"]["total"]["cost_usd"] <= budget
    assert 0 < len(read_jsonl(out / "pairs.jsonl")) < 6

    r = run_cli(*build_args(fresh, out, "--prices", str(prices), "--max-cost", f"{total + 10:.4f}", n=6))
    assert r.exit_code == 0, r.stderr
    assert snapshot(out) == snapshot(ref)


def test_unreachable_endpoint_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    r = run_cli("build", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out), "--n", "1", "-q")
    assert r.exit_code == 2
    assert "does not answer" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 20
    assert not out.exists()


def test_missing_key_for_openai_exits_2(tmp_path):
    r = run_cli("build", "--backend", "openai", "--out", str(tmp_path / "r"), "-q")
    assert r.exit_code == 2 and "OPENAI_API_KEY" in r.stderr


def test_wrong_key_and_unknown_model_exit_2(fake, tmp_path, monkeypatch):
    server = fake(api_key="right")
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    r = run_cli(*build_args(server, tmp_path / "r"))
    assert r.exit_code == 2 and "rejected the API key" in r.stderr
    monkeypatch.setenv("OPENAI_API_KEY", "right")
    r = run_cli(*build_args(server, tmp_path / "r", "--model", "other"))
    assert r.exit_code == 2 and "does not serve model 'other'" in r.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--domain", "astrology"], "unknown domain 'astrology'"),
        (["--n", "0"], "n: Input should be greater than or equal to 1"),
        (["--concurrency", "x"], "'x' is not a valid integer"),
        (["--max-failure-rate", "2"], "max_failure_rate"),
    ],
)
def test_bad_options_exit_2_with_one_line(fake, tmp_path, args, expected):
    server = fake()
    r = run_cli(*build_args(server, tmp_path / "r"), *args)
    assert r.exit_code == 2
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert server.chat_requests == 0


def test_config_file_sets_options_and_rejects_unknown_keys(fake, tmp_path):
    server = fake()
    cfg = tmp_path / "dsgen.yaml"
    cfg.write_text("n: 2\nquestions_per_call: 2\ndomains: [legal]\n")
    out = tmp_path / "run"
    r = run_cli(
        "build", "--config", str(cfg), "--base-url", server.base_url, "--model", "fake-model", "--out", str(out), "-q"
    )
    assert r.exit_code == 0, r.stderr
    assert [p["domain"] for p in read_jsonl(out / "pairs.jsonl")] == ["legal", "legal"]
    cfg.write_text("n: 2\nconcurency: 3\n")
    r = run_cli("build", "--config", str(cfg), "--base-url", server.base_url, "--out", str(out))
    assert r.exit_code == 2 and "concurency" in r.stderr and "unknown setting" in r.stderr


def test_foreign_or_corrupt_run_directory_exits_2_untouched(fake, tmp_path):
    server = fake()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = run_cli(*build_args(server, foreign))
    assert r.exit_code == 2 and "not a dsgen run directory" in r.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text("{not json")
    r = run_cli(*build_args(server, corrupt))
    assert r.exit_code == 2 and "unreadable manifest" in r.stderr
    assert (corrupt / "manifest.json").read_text() == "{not json"


def test_concurrency_is_bounded_and_used(fake, tmp_path):
    server = fake(latency=0.2)
    r = run_cli(*build_args(server, tmp_path / "run", "--concurrency", "6", n=30))
    assert r.exit_code == 0
    assert 4 <= server.max_in_flight <= 6


def test_timeouts_are_retried(fake, tmp_path):
    server = fake(rates={"slow": 0.2}, slow_s=3.0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("timeout: 0.5\n")
    r = run_cli(*build_args(server, tmp_path / "run", "--config", str(cfg), "--json", n=6))
    assert r.exit_code == 0, r.stderr
    assert server.faults["slow"] > 0
    assert json.loads(r.stdout)["usage"]["last_invocation"]["errors"]["timeout"] == server.faults["slow"]


def test_endpoint_failing_past_retries_exits_4_and_resumes(fake, tmp_path):
    server = fake(rates={"server_error": 1.0})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("transient_attempts: 2\n")
    out = tmp_path / "run"
    r = run_cli(*build_args(server, out, "--config", str(cfg), n=3))
    assert r.exit_code == 4, r.stderr
    assert "re-run" in r.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "remote_failed"
    server.config.rates = {}
    r = run_cli(*build_args(server, out, "--config", str(cfg), n=3))
    assert r.exit_code == 0
    assert len(read_jsonl(out / "pairs.jsonl")) == 3


def test_near_duplicate_questions_are_kept_once(fake, tmp_path):
    server = fake(duplicate_rate=0.3)
    out = tmp_path / "run"
    assert run_cli(*build_args(server, out, n=12)).exit_code == 0
    questions = read_jsonl(out / "questions.jsonl")
    dupes = [q for q in questions if q["duplicate_of"]]
    assert dupes and all(q["similarity"] >= 90 for q in dupes)
    ids = {q["id"] for q in questions}
    assert all(q["duplicate_of"] in ids for q in dupes)
    prompts = [p["prompt"] for p in read_jsonl(out / "pairs.jsonl")]
    assert len(prompts) == 12 and len(set(prompts)) == 12
    # "aspirin" and "aspirins" are near-copies (ratio > 90): one of them at most.
    assert sum("with my morning coffee" in p for p in prompts) == 1


def test_separate_mode_makes_two_calls_per_pair(fake, tmp_path):
    server = fake()
    out = tmp_path / "run"
    r = run_cli(*build_args(server, out, "--pair-mode", "separate", "--json", n=3))
    assert r.exit_code == 0
    stages = json.loads(r.stdout)["usage"]["last_invocation"]["by_stage"]
    assert stages["aligned"]["requests"] == 3 and stages["misaligned"]["requests"] == 3
    assert {p["pair_mode"] for p in read_jsonl(out / "pairs.jsonl")} == {"separate"}


def test_killed_build_resumes_to_the_same_output(fake, tmp_path):
    ref_server = fake(latency=0.02, rates={"malformed": 0.1, "rate_limit": 0.1})
    ref = tmp_path / "ref"
    assert run_cli(*build_args(ref_server, ref, "--concurrency", "4", n=40)).exit_code == 0
    total_requests = ref_server.chat_requests

    server = fake(latency=0.02, rates={"malformed": 0.1, "rate_limit": 0.1})
    out = tmp_path / "run"
    proc = dsgen_subprocess(*build_args(server, out, "--concurrency", "4", n=40))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cache = out / "cache.sqlite"
        if cache.exists():
            try:
                with sqlite3.connect(cache) as db:
                    if db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] >= 15:
                        break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not (out / "pairs.jsonl").exists() or len(read_jsonl(out / "pairs.jsonl")) < 40
    paid_before_kill = server.chat_requests

    r = run_cli(*build_args(server, out, "--concurrency", "4", n=40))
    assert r.exit_code == 0, r.stderr
    assert snapshot(out) == snapshot(ref)
    assert server.chat_requests - paid_before_kill < total_requests  # finished calls were not paid again


def test_second_process_on_the_same_run_directory_is_refused(fake, tmp_path):
    server = fake(latency=0.3)
    out = tmp_path / "run"
    proc = dsgen_subprocess(*build_args(server, out, "--concurrency", "2", n=20))
    try:
        deadline = time.monotonic() + 60
        while not (out / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = run_cli(*build_args(server, out, "--concurrency", "2", n=20))
        assert r.exit_code == 2 and "another dsgen process" in r.stderr
    finally:
        proc.kill()
        proc.wait(10)


def test_server_without_json_schema_fails_clearly_and_works_with_plain_json(fake, tmp_path):
    server = fake(json_schema=False)
    r = run_cli(*build_args(server, tmp_path / "a", n=3))
    assert r.exit_code == 1
    failures = read_jsonl(tmp_path / "a" / "failures.jsonl")
    assert failures and all(f["reason"] == "bad_request" for f in failures)
    assert "--structured-output" in failures[0]["detail"]
    r = run_cli(*build_args(server, tmp_path / "b", "--structured-output", "none", n=3))
    assert r.exit_code == 0, r.stderr
    assert len(read_jsonl(tmp_path / "b" / "pairs.jsonl")) == 3


def test_a_domain_named_twice_is_built_once(fake, tmp_path):
    server = fake()
    out = tmp_path / "run"
    assert run_cli(*build_args(server, out, n=3, domains=("legal", "legal"))).exit_code == 0
    assert len(read_jsonl(out / "pairs.jsonl")) == 3


def test_failed_calls_are_not_paid_again_on_rerun(fake, tmp_path):
    server = fake(rates={"refusal": 0.7})
    out = tmp_path / "run"
    args = build_args(server, out, "--max-failure-rate", "1", n=8)
    assert run_cli(*args).exit_code == 0
    assert read_jsonl(out / "failures.jsonl")
    paid, before = server.chat_requests, snapshot(out)
    assert run_cli(*args).exit_code == 0
    assert server.chat_requests == paid and snapshot(out) == before
    assert run_cli(*args, "--retry-failed").exit_code == 0
    assert server.chat_requests > paid  # asked again on request


def test_endpoint_down_stops_every_queued_call(fake, tmp_path):
    server = fake(rates={"server_error": 1.0})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("transient_attempts: 2\n")
    r = run_cli(*build_args(server, tmp_path / "run", "--config", str(cfg), "--concurrency", "4", n=100))
    assert r.exit_code == 4
    # 125 question calls are queued; without the stop each would make its 2 attempts (250 requests).
    # Once the first call gives up, no call starts another attempt.
    assert server.chat_requests <= 40


def test_unwritable_out_and_bad_cache_exit_2(fake, tmp_path):
    server = fake()
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = run_cli(*build_args(server, afile / "sub"))
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    folder = tmp_path / "cachedir"
    folder.mkdir()
    r = run_cli(*build_args(server, tmp_path / "run", "--cache", str(folder)))
    assert r.exit_code == 2 and "cannot open the response cache" in r.stderr


def test_interrupted_build_keeps_outputs_and_spend(fake, tmp_path):
    server = fake(latency=0.05)
    out = tmp_path / "run"
    proc = dsgen_subprocess(*build_args(server, out, "--concurrency", "2", n=200))
    deadline = time.monotonic() + 60
    while server.chat_requests < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "re-run" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["usage"]["total"]["requests"] > 0
    assert (out / "questions.jsonl").exists()
