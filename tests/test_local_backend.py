"""The offline backend on the real embedded SmolLM2 (no network): a couple of real pairs."""

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
