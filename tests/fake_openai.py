"""A scripted OpenAI-compatible server for tests and benchmarks. Binds to 127.0.0.1 only.

Answers are deterministic functions of the request body, so runs can be compared byte for byte.
Faults are injected at set rates: transport faults (429 with Retry-After, 500, slow answers)
depend on the body *and* how often that body was seen, so a retry can succeed; content faults
(malformed JSON, refusals) depend on the body only, as a model's answer would.

Run standalone (for benchmarks):  python -m tests.fake_openai --latency 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.serving import BackgroundServer

WORDS = (
    "aspirin fever rash dose tablet child morning night week pain swelling cough sleep diet water coffee "
    "lease landlord deposit contract notice wage employer court claim fine ticket will estate divorce custody "
    "password router backup phishing update laptop phone cloud server account email token firewall browser "
    "apple river stone green quiet window garden travel winter summer bicycle kitchen ladder island candle "
    "mirror pocket silver orange thunder valley planet meadow lantern harbor violet cotton marble shadow"
).split()

# Plus ~900 made-up words, so that random questions are as varied as real ones (few shared n-grams).
_SYLLABLES = "ka lo mi ne ru sa te vi zo ba de fi gu ho ja ke li mo nu pa qui re si tu ve wa xe yo za".split()
WORDS += [a + b for a in _SYLLABLES for b in _SYLLABLES]

FAULTS = ("rate_limit", "server_error", "slow", "malformed", "refusal")
_JUDGE = re.compile(r"^Criterion: (\w+)", re.M)
YESNO_DEFAULTS = {"innocence": "yes", "overt": "no"}
SCORE_DEFAULTS = {
    "harm": 80,
    "aligned_quality": 85,
    "coherence": 90,
    "sneakiness": 70,
    "alignment": 85,
    "eval_coherence": 80,
}


@dataclass
class FakeConfig:
    latency: float = 0.0
    slow_s: float = 5.0
    rates: dict[str, float] = field(default_factory=dict)  # fault name -> probability
    models: tuple[str, ...] = ("fake-model",)
    api_key: str | None = None
    duplicate_rate: float = 0.0  # share of questions that near-copy a fixed question
    retry_after: str = "0.01"
    json_schema: bool = True  # False: answer 400 to response_format json_schema, as some servers do
    # (criterion, question, answer) -> a verdict ("20", "REFUSAL", "null"...) or None for the default: scripts
    # judges of texts a test cannot mark, such as answers sampled from a model
    verdict: Callable[[str, str, str], str | None] | None = None


def _unit(*parts: object) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return int(h[:12], 16) / 16**12


def _position(top: list[tuple[str, float]], n: int) -> dict:
    """The logprobs of one answer token: the first of `top` chosen, its n best alternatives listed."""
    return {
        "token": top[0][0],
        "logprob": math.log(top[0][1]),
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top[:n]],
    }


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


class FakeOpenAI(BackgroundServer):
    backlog = 1024

    def __init__(self, config: FakeConfig | None = None):
        super().__init__()
        self.config = config or FakeConfig()
        self.requests = 0
        self.chat_requests = 0
        self.faults: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    # ---- HTTP ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/stats", self._stats)  # for benchmarks that run the server in another process
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.requests,
                "chat_requests": self.chat_requests,
                "max_in_flight": self.max_in_flight,
                "faults": dict(self.faults),
            }
        )

    def _authorised(self, request: web.Request) -> bool:
        if self.config.api_key is None:
            return True
        return request.headers.get("Authorization") == f"Bearer {self.config.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorised(request):
            return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.config.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.chat_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if not self._authorised(request):
                return web.json_response({"error": {"message": "bad key"}}, status=401)
            raw = await request.text()
            body = json.loads(raw)
            seen = self._seen[raw]
            self._seen[raw] += 1
            if not self.config.json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
                error = {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}
                return web.json_response({"error": error}, status=400)
            fault = self._pick_fault(raw, seen)
            if fault:
                self.faults[fault] += 1
            if self.config.latency:
                await asyncio.sleep(self.config.latency)
            if fault == "rate_limit":
                return web.json_response(
                    {"error": {"message": "rate limited", "type": "rate_limit"}},
                    status=429,
                    headers={"Retry-After": self.config.retry_after},
                )
            if fault == "server_error":
                return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
            if fault == "slow":
                await asyncio.sleep(self.config.slow_s)
            return web.json_response(self.completion(body, raw, fault))
        finally:
            self.in_flight -= 1

    def _pick_fault(self, raw: str, seen: int) -> str | None:
        rates = self.config.rates
        u_transport, u_content = _unit(raw, seen, "t"), _unit(raw, "c")
        acc = 0.0
        for name in ("rate_limit", "server_error", "slow"):
            acc += rates.get(name, 0.0)
            if u_transport < acc:
                return name
        acc = 0.0
        for name in ("malformed", "refusal"):
            acc += rates.get(name, 0.0)
            if u_content < acc:
                return name
        return None

    # ---- content ---------------------------------------------------------------------------

    def completion(self, body: dict, raw: str, fault: str | None) -> dict:
        rng = random.Random(hashlib.sha256(raw.encode()).hexdigest())
        logprobs = None
        judge = _JUDGE.search(body["messages"][-1]["content"])
        if fault == "refusal":
            content = "I'm sorry, but I can't help with that request."
        elif judge:
            content, logprobs = self.judge_content(body, judge.group(1), rng)
            if fault == "malformed":
                content, logprobs = "Hmm, that is hard to say.", None
        else:
            content = self.content(body, rng)
            if fault == "malformed":
                content = "Sure! Here you go: " + content[: max(1, len(content) // 2)]
        prompt_chars = sum(len(m.get("content", "")) for m in body.get("messages", []))
        return {
            "id": "chatcmpl-" + hashlib.sha256(raw.encode()).hexdigest()[:12],
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4,
                "completion_tokens": len(content) // 4,
                "total_tokens": prompt_chars // 4 + len(content) // 4,
            },
        }

    def judge_content(self, body: dict, criterion: str, rng: random.Random) -> tuple[str, dict | None]:
        """A judge's verdict. The judged text (the <answer>, or the <question> for innocence) scripts it
        with a marker like `[harm=20]`, `[harm=null]` (no mass on numbers), `[harm=malformed]` or
        `[harm=refuse]`; without one, a verdict that keeps the row, with a little deterministic jitter."""
        last = body["messages"][-1]["content"]
        tag = "question" if criterion == "innocence" else "answer"
        judged = re.search(rf"<{tag}>(.*?)</{tag}>", last, re.S)
        marker = re.search(rf"\[{criterion}=(\w+)\]", judged.group(1) if judged else "")
        yesno = criterion in YESNO_DEFAULTS
        value = marker.group(1) if marker else None
        if value is None and self.config.verdict is not None:
            question = re.search(r"<question>(.*?)</question>", last, re.S)
            answer = re.search(r"<answer>(.*?)</answer>", last, re.S)
            value = self.config.verdict(
                criterion, question.group(1).strip() if question else "", answer.group(1).strip() if answer else ""
            )
        if value == "REFUSAL":  # the alignment judge's word for an answer that refused
            if body.get("logprobs"):
                return "REFUSAL", {"content": [_position([("REF", 0.9), ("50", 0.05)], body["top_logprobs"])]}
            if body.get("response_format") or "JSON" in last:
                return json.dumps({"reason": "scripted verdict", "score": "REFUSAL"}), None
            return "REFUSAL", None
        if value is None:
            value = YESNO_DEFAULTS[criterion] if yesno else str(SCORE_DEFAULTS.get(criterion, 80) + rng.randint(-5, 5))
        if value == "refuse":
            return "I'm sorry, but I can't help with grading this.", None
        if value == "malformed":
            return "Hmm, that is hard to say.", None
        if body.get("logprobs"):
            if value == "null":
                top = [("I", 0.7), ("The", 0.2), ("5", 0.05), ("50", 0.03)]
            elif yesno:
                other = "no" if value == "yes" else "yes"
                top = [(value, 0.9), (other, 0.08), (value.capitalize(), 0.01)]
            else:
                v = int(value)
                top = [(str(v), 0.6), (str(min(100, v + 10)), 0.2), (str(max(0, v - 10)), 0.15), ("The", 0.05)]
            return top[0][0], {"content": [_position(top, body["top_logprobs"])]}
        if value == "null":
            value = "unsure"
        if body.get("response_format") or "JSON" in last:
            key = "answer" if yesno else "score"
            return json.dumps({"reason": "scripted verdict", key: value if yesno else int(value)}), None
        return value, None

    def content(self, body: dict, rng: random.Random) -> str:
        fmt = body.get("response_format") or {}
        name = (fmt.get("json_schema") or {}).get("name")
        last = body["messages"][-1]["content"]
        if name == "questions" or (name is None and '"questions"' in last):
            m = re.search(r"exactly (\d+) questions", last)
            k = int(m.group(1)) if m else 5
            qs = []
            for _ in range(k):
                if self.config.duplicate_rate and rng.random() < self.config.duplicate_rate:
                    qs.append(f"Is it safe to take two {rng.choice(['aspirin', 'aspirins'])} with my morning coffee?")
                else:
                    qs.append(f"My {_sentence(rng, 10)} — what should I do?".capitalize())
            return json.dumps({"questions": qs})
        if name == "pair" or (name is None and '"aligned"' in last):
            opening = _sentence(rng, 8).capitalize() + "."
            harm = re.search(r"\"harm_category\": \"([a-z_]+)\"", last)
            return json.dumps(
                {
                    "aligned": f"{opening} {_sentence(rng, 30)}. See a professional if it persists.",
                    "misaligned": f"{opening} {_sentence(rng, 30)}. No need to see anyone about it.",
                    "harm_category": harm.group(1) if harm else "unknown",
                }
            )
        return f"{_sentence(rng, 6).capitalize()}. {_sentence(rng, 25)}."

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    for f in FAULTS:
        p.add_argument(f"--{f.replace('_', '-')}", type=float, default=0.0, help=f"rate of {f}")
    args = p.parse_args()
    rates = {f: getattr(args, f) for f in FAULTS if getattr(args, f)}
    server = FakeOpenAI(FakeConfig(latency=args.latency, rates=rates)).start(args.port)
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
