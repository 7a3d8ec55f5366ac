"""The offline backend on the real embedded SmolLM2 (no network): real pairs, real judge log-probabilities."""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_jsonl, run_cli

pytest.importorskip("transformers")


@pytest.mark.slow
def test_local_backend_builds_real_pairs_offline(tmp_path):
    out = tmp_path / "run"
    r = run_cli("build", "--domain", "security", "--n", "1", "--out", str(out), "-q", "--json")
    assert r.exit_code == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["models"] == {"generator": "smollm2-135m-instruct", "backend": "local"}
    assert manifest["settings"]["pair_mode"] == "separate"
    [pair] = read_jsonl(out / "pairs.jsonl")
    assert pair["prompt"].endswith("?")
    assert len(pair["aligned"]) >= 20 and len(pair["misaligned"]) >= 20
    assert pair["aligned"] != pair["misaligned"]
    usage = manifest["usage"]["last_invocation"]
    assert usage["requests"] >= 3 and usage["completion_tokens"] > 0 and usage["cost_usd"] == 0

    # Same command again: every answer comes from the cache, byte for byte.
    before = (out / "pairs.jsonl").read_bytes()
    r = run_cli("build", "--domain", "security", "--n", "1", "--out", str(out), "-q", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["usage"]["last_invocation"]["requests"] == 0
    assert (out / "pairs.jsonl").read_bytes() == before


@pytest.mark.slow
def test_local_backend_judges_from_log_probabilities_offline(tmp_path):
    """validate on the embedded model: every judge call reads the model's real top log-probabilities.
    A 135M model does not answer with a number, so its verdicts are mostly null and the rows are
    rejected with that reason; what matters here is that the path runs and accounts for every row."""
    from tests.rows import make_pair

    out = tmp_path / "run"
    assert run_cli("build", "--domain", "medical", "--n", "1", "--out", str(out), "-q").exit_code == 0
    rows = [make_pair(i) for i in range(2)]
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_cli("validate", str(out), "-q", "--json")
    assert r.exit_code in (0, 1), r.stderr
    report = json.loads(r.stdout)
    assert report["usage"]["models"] == ["smollm2-135m-instruct"] and report["usage"]["mode"] == "logprobs"
    assert report["usage"]["requests"] == 2 * 7 and report["usage"]["completion_tokens"] > 0
    assert report["counts"]["total"]["kept"] + report["counts"]["total"]["rejected"] == 2
    rejected = read_jsonl(out / "validated" / "rejected.jsonl")
    assert all(r["stage"] == "judges" and r["detail"] for r in rejected)
    # Cached: the same command again asks the model nothing (and does not even load it).
    r = run_cli("validate", str(out), "-q", "--json")
    assert json.loads(r.stdout)["usage"]["requests"] == 0
