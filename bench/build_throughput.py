"""Build throughput against the scripted server: achieved calls/s vs the ideal, then a cached re-run.

The server runs in its own process with a fixed latency; the ideal rate is concurrency / latency.
Prints the median of --repeats runs (machines here are shared and noisy).

    python bench/build_throughput.py [--pairs 2000] [--latency 0.1] [--concurrency 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsgen.config import load_config  # noqa: E402
from dsgen.generators.run import run_build  # noqa: E402
from dsgen.llm import openai_backend  # noqa: E402,F401  (imported once here: its ~1 s import is start-up, not throughput)


def server_stats(base: str) -> dict:
    with urllib.request.urlopen(base.removesuffix("/v1") + "/stats") as r:
        return json.load(r)


def client_baseline(base: str, calls: int, concurrency: int) -> float:
    """Calls/s of the bare openai client (aiohttp transport) sending the same number of small requests:
    what this machine allows before any of dsgen's own work."""
    import asyncio

    import openai

    async def go() -> float:
        client = openai.AsyncOpenAI(
            api_key="k", base_url=base, max_retries=0, http_client=openai.DefaultAioHttpClient()
        )
        sem = asyncio.Semaphore(concurrency)
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "Answer briefly. " * 40}]}

        async def one(i: int) -> None:
            async with sem:
                await client.post("/chat/completions", body=body | {"seed": i}, cast_to=object)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        elapsed = time.perf_counter() - t0
        await client.close()
        return calls / elapsed

    return asyncio.run(go())


def one_build(base: str, out: Path, pairs: int, concurrency: int) -> tuple[float, int, int]:
    """(seconds, chat requests made, exit code) for one build."""
    cfg = load_config(
        None,
        {
            "base_url": base,
            "model": "fake-model",
            "out": out,
            "n": pairs,
            "domains": ["medical"],
            "concurrency": concurrency,
        },
    )
    before = server_stats(base)["chat_requests"]
    t0 = time.perf_counter()
    result = run_build(cfg, quiet=True)
    elapsed = time.perf_counter() - t0
    return elapsed, server_stats(base)["chat_requests"] - before, result.exit_code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--latency", str(args.latency)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base = server.stdout.readline().strip()
        ideal = args.concurrency / args.latency
        rates, cold, warm, warm_requests, baselines = [], [], [], [], []
        for i in range(args.repeats):
            baselines.append(client_baseline(base, 2500, args.concurrency))
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "run"
                secs, calls, code = one_build(base, out, args.pairs, args.concurrency)
                assert code == 0, f"build exited {code}"
                rates.append(calls / secs)
                cold.append(secs)
                secs2, calls2, code2 = one_build(base, out, args.pairs, args.concurrency)
                assert code2 == 0
                warm.append(secs2)
                warm_requests.append(calls2)
                pairs = sum(1 for _ in (out / "pairs.jsonl").open())
                print(
                    f"run {i + 1}: {pairs} pairs, {calls} calls in {secs:.2f} s = {calls / secs:.0f} calls/s; "
                    f"cached re-run {secs2:.2f} s, {calls2} requests",
                    flush=True,
                )
        rate, baseline = statistics.median(rates), statistics.median(baselines)
        print(
            f"\nmedian achieved: {rate:.0f} calls/s   ideal (concurrency/latency): {ideal:.0f} calls/s   "
            f"ratio: {rate / ideal:.2f}"
        )
        print(
            f"bare openai client, same server, same run: {baseline:.0f} calls/s ({baseline / ideal:.2f} of ideal); "
            f"dsgen reaches {rate / baseline:.2f} of it"
        )
        print(
            f"cached re-run: median {statistics.median(warm):.2f} s = "
            f"{statistics.median(warm) / statistics.median(cold):.1%} of the first run; "
            f"requests made: {max(warm_requests)}"
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
