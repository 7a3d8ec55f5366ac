from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsgen.cli import cli
from tests.fake_openai import FakeConfig, FakeOpenAI

SECRET = "sk-test-SECRET-0123456789"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake():
    """Start scripted servers on 127.0.0.1: fake(latency=..., rates={...})."""
    servers: list[FakeOpenAI] = []

    def start(**kwargs) -> FakeOpenAI:
        server = FakeOpenAI(FakeConfig(**kwargs)).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Result:
    """Run `dsgen` in this process (fast), with separate stdout and stderr."""
    r = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


def build_args(server: FakeOpenAI, out: Path, *extra: str, n: int = 6, domains=("medical",)) -> list[str]:
    args = ["build", "--base-url", server.base_url, "--model", "fake-model", "--out", str(out), "--n", str(n), "-q"]
    for d in domains:
        args += ["--domain", d]
    return args + list(extra)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def dsgen_subprocess(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "dsgen.cli", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def crafted(fake, tmp_path):
    """A real run directory (built against the scripted server) whose pairs.jsonl is replaced by crafted rows."""
    server = fake()
    out = tmp_path / "run"
    assert run_cli(*build_args(server, out, n=2, domains=("medical", "legal"))).exit_code == 0

    def write(rows: list[dict | str]) -> Path:
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        (out / "pairs.jsonl").write_text("".join(line + "\n" for line in lines))
        return out

    write.server = server  # type: ignore[attr-defined]
    return write


def validate_args(server, run: Path, *extra: str) -> list[str]:
    return ["validate", str(run), "--base-url", server.base_url, "--judge-model", "fake-model", "-q", *extra]
