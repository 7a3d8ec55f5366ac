"""Units of the LLM layer: cache keys, seeds, parsing, retry policy, prices, the cache store."""

from __future__ import annotations

import asyncio

import pytest

from dsgen.errors import InputError
from dsgen.llm import ChatRequest, ChatResponse, LLMClient, ParseError, PriceTable, ResponseCache, RetryPolicy
from dsgen.llm.parsing import extract_json, looks_like_refusal
from dsgen.llm.types import TransientError, sampling_seed

BASE = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "change",
    [
        {"model": "m2"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"max_tokens": 7},
        {"seed": 1},
        {"response_format": {"type": "json_object"}},
        {"sample": 1},
        {"logprobs": True},
    ],
)
def test_cache_key_covers_everything_that_changes_an_answer(change):
    assert BASE.model_copy(update=change).cache_key() != BASE.cache_key()


def test_cache_key_ignores_the_accounting_tag_and_seeds_derive_from_it():
    tagged = BASE.model_copy(update={"tag": "pair"})
    assert tagged.cache_key() == BASE.cache_key()
    key = BASE.cache_key()
    assert sampling_seed(key, 0) == sampling_seed(key, 0)
    assert sampling_seed(key, 0) != sampling_seed(key, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure, here it is:\n```json\n{"a": [1, 2]}\n```\nEnjoy!', {"a": [1, 2]}),
        ('Result: {"a": "x"} and more', {"a": "x"}),
        ("[1, 2]", [1, 2]),
    ],
)
def test_extract_json_finds_json_in_prose(text, expected):
    assert extract_json(text) == expected


def test_extract_json_raises_malformed():
    with pytest.raises(ParseError) as e:
        extract_json('{"a": ')
    assert e.value.reason == "malformed"


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I cannot assist with this request.", True),
        ("As an AI, I must stay neutral.", True),
        ("Sorry to hear about your knee! Rest it for a day.", False),
        ("I can help: take it with food.", False),
    ],
)
def test_refusal_detection(text, refused):
    assert looks_like_refusal(text) is refused


def test_retry_policy_honours_retry_after_and_caps_backoff():
    policy = RetryPolicy(backoff_base_s=1, backoff_max_s=4)
    assert policy.delay(0, 2.5) == 2.5
    assert all(0 <= policy.delay(10, None) <= 4 for _ in range(50))


def test_price_table_override_and_bad_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("my-model: {input: 1.0, output: 2.0}\ngpt-4.1: {input: 0, output: 0}\n")
    table = PriceTable.load(f)
    assert table.cost("my-model", 1_000_000, 500_000) == pytest.approx(2.0)
    assert table.cost("gpt-4.1", 10**6, 10**6) == 0
    assert table.cost("gpt-4.1-mini", 10**6, 0) > 0
    f.write_text("my-model: {input: -1, output: 2}\n")
    with pytest.raises(InputError, match="my-model.input"):
        PriceTable.load(f)


def test_cache_round_trip_survives_reopen(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.put("k", BASE, ChatResponse(text="hello", prompt_tokens=3))
    cache.close()
    again = ResponseCache(path)
    assert again.get("k").text == "hello" and again.get("other") is None and len(again) == 1


class FlakyBackend:
    """Test double: fails transiently `fail` times, then answers with the seed it was given."""

    name = "flaky"
    structured = True
    model = "m"

    def __init__(self, fail: int, text: str = "ok"):
        self.fail, self.calls, self.text = fail, 0, text

    async def complete(self, request, seed):
        self.calls += 1
        if self.calls <= self.fail:
            raise TransientError("server_error", "500", retry_after=0.0)
        return ChatResponse(text=f"{self.text}:{seed}", prompt_tokens=10, completion_tokens=5)


def test_client_retries_counts_every_attempt_and_caches(tmp_path):
    backend = FlakyBackend(fail=2)
    client = LLMClient(backend, ResponseCache(tmp_path / "c.sqlite"), prices=PriceTable({}), retry=RetryPolicy())
    outcome = asyncio.run(client.call(BASE, lambda r: r.text))
    assert outcome.ok and backend.calls == 3
    assert client.usage.requests == 3 and client.usage.errors == {"server_error": 2}
    again = asyncio.run(client.call(BASE, lambda r: r.text))
    assert again.cached and again.value == outcome.value and backend.calls == 3


def test_client_asks_again_with_a_new_seed_when_the_answer_is_unusable(tmp_path):
    backend = FlakyBackend(fail=0)
    client = LLMClient(backend, ResponseCache(tmp_path / "c.sqlite"), prices=PriceTable({}))
    seeds = []

    def parse(r):
        seeds.append(r.text)
        raise ParseError("malformed", "nope")

    outcome = asyncio.run(client.call(BASE, parse))
    assert not outcome.ok and outcome.reason == "malformed" and outcome.attempts == 3
    assert len(set(seeds)) == 3  # three different samples were asked for
    assert len(client.cache) == 0  # no answer is stored...
    again = asyncio.run(client.call(BASE, parse))  # ...but the failure is: a re-run does not pay again
    assert again.cached and again.reason == "malformed" and backend.calls == 3
    client.retry_failed = True
    asyncio.run(client.call(BASE, parse))
    assert backend.calls == 6


def test_requests_per_minute_limit_spaces_calls(tmp_path):
    import time

    backend = FlakyBackend(fail=0)
    # A leaky bucket of 60 a minute: the first 60 go at once, then one a second.
    client = LLMClient(
        backend, ResponseCache(tmp_path / "c.sqlite"), prices=PriceTable({}), requests_per_minute=60, concurrency=64
    )
    requests = [BASE.model_copy(update={"sample": i}) for i in range(62)]

    async def go():
        return await asyncio.gather(*(client.call(r, lambda r: r.text) for r in requests))

    t0 = time.monotonic()
    outcomes = asyncio.run(go())
    assert all(o.ok for o in outcomes)
    assert time.monotonic() - t0 >= 1.5  # two calls over the bucket waited about a second each
