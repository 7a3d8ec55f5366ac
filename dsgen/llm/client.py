"""The one place that sends model calls: cache, concurrency and rate limits, retries, budget, usage.

A call is *logical*: it ends with a parsed value, or with a recorded failure reason after its
retries. Transient faults (429, 5xx, timeouts) are retried with exponential backoff and jitter,
honouring Retry-After; an unusable answer (malformed, refusal) is asked again with a new seed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiolimiter import AsyncLimiter

from ..errors import BudgetExceeded, RemoteError
from .backends import Backend
from .cache import ResponseCache
from .types import ChatRequest, ChatResponse, ParseError, PermanentError, TransientError, sampling_seed
from .usage import PriceTable, Usage

T = TypeVar("T")

CHARS_PER_TOKEN = 4  # rough, for budgets and dry runs before the model has counted


def estimate_prompt_tokens(request: ChatRequest) -> int:
    return sum(len(m["content"]) for m in request.messages) // CHARS_PER_TOKEN + 8 * len(request.messages)


@dataclass(frozen=True)
class RetryPolicy:
    transient_attempts: int = 6  # attempts per answer when the service faults
    parse_attempts: int = 3  # answers asked for when they are malformed or refused
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 120.0)
        # Full jitter: spreads retries of many concurrent callers.
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))


@dataclass
class Outcome(Generic[T]):
    key: str
    value: T | None = None
    reason: str | None = None  # failure reason when value is None
    detail: str = ""
    attempts: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


class LLMClient:
    def __init__(
        self,
        backend: Backend,
        cache: ResponseCache,
        *,
        prices: PriceTable,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        max_cost: float | None = None,
        spent_before: float = 0.0,
        retry_failed: bool = False,
    ):
        self.backend = backend
        self.cache = cache
        self.prices = prices
        self.retry = retry or RetryPolicy()
        self.usage = Usage()
        self.max_cost = max_cost
        self.spent_before = spent_before  # spent by earlier invocations on the same run
        self.retry_failed = retry_failed  # ask again for calls that failed on an earlier invocation
        self._sem = asyncio.Semaphore(concurrency)
        self._rpm = AsyncLimiter(requests_per_minute, 60) if requests_per_minute else None
        self._tpm = AsyncLimiter(tokens_per_minute, 60) if tokens_per_minute else None
        self._reserved = 0.0  # worst-case cost of calls in flight
        self._stopped: BudgetExceeded | RemoteError | None = None  # once set, no new attempt starts

    async def call(self, request: ChatRequest, parse: Callable[[ChatResponse], T]) -> Outcome[T]:
        """Return the parsed answer (from the cache when there is one) or a failure with its reason.

        Raises BudgetExceeded or RemoteError, which end the run (everything so far is kept).
        """
        key = request.cache_key()
        cached = self.cache.get(key)
        if cached is not None:
            try:
                value = parse(cached)
            except ParseError:
                pass  # the parser changed since; ask again
            else:
                self.usage.add_cache_hit(request.tag)
                return Outcome(key, value=value, cached=True)
        failed = None if self.retry_failed else self.cache.get_failure(key)
        if failed is not None:
            self.usage.add_cache_hit(request.tag)
            reason, detail, attempts = failed
            return Outcome(key, reason=reason, detail=detail, attempts=attempts, cached=True)
        last = ParseError("malformed", "no attempt made")
        for attempt in range(self.retry.parse_attempts):
            try:
                response = await self._send(request, sampling_seed(key, attempt))
            except PermanentError as e:
                if e.fatal:
                    raise RemoteError(f"the model endpoint refused the call ({e.detail})") from None
                return Outcome(key, reason=e.reason, detail=e.detail, attempts=attempt + 1)
            try:
                value = parse(response)
            except ParseError as e:
                last = e
                self.usage.add_error(request.tag, e.reason)
                continue
            self.cache.put(key, request, response)
            return Outcome(key, value=value, attempts=attempt + 1)
        detail = last.detail[:500]
        self.cache.put_failure(key, last.reason, detail, self.retry.parse_attempts)
        return Outcome(key, reason=last.reason, detail=detail, attempts=self.retry.parse_attempts)

    def _worst_case_cost(self, request: ChatRequest) -> float:
        return self.prices.cost(request.model, estimate_prompt_tokens(request), request.max_tokens)

    def _reserve(self, request: ChatRequest) -> float:
        if self._stopped is not None:
            raise self._stopped
        worst = self._worst_case_cost(request)
        spent = self.spent_before + self.usage.cost_usd
        if self.max_cost is not None and spent + self._reserved + worst > self.max_cost:
            self._stopped = BudgetExceeded(
                f"stopped before exceeding --max-cost {self.max_cost:g} USD (spent {spent:.4f} USD on this run); "
                "re-run with a larger budget to resume"
            )
            raise self._stopped
        self._reserved += worst
        return worst

    async def _send(self, request: ChatRequest, seed: int) -> ChatResponse:
        """One answer from the backend, retrying transient faults. Every attempt is counted."""
        for attempt in range(self.retry.transient_attempts):
            if self._rpm:
                await self._rpm.acquire()
            if self._tpm:
                tokens = estimate_prompt_tokens(request) + request.max_tokens
                await self._tpm.acquire(min(tokens, self._tpm.max_rate))
            async with self._sem:
                # Reserved only once a slot is free, so queued calls do not hold budget.
                worst = self._reserve(request)
                try:
                    response = await self.backend.complete(request, seed)
                except PermanentError as e:
                    self.usage.add_failed_request(request.tag, e.reason)
                    raise
                except TransientError as e:
                    self.usage.add_failed_request(request.tag, e.reason)
                    failure = e
                else:
                    pt, ct = response.prompt_tokens, response.completion_tokens
                    if not (pt or ct):  # a server that reports no usage: estimate, so that budgets still hold
                        pt, ct = estimate_prompt_tokens(request), len(response.text) // CHARS_PER_TOKEN
                    self.usage.add_request(request.tag, pt, ct, self.prices.cost(request.model, pt, ct))
                    return response
                finally:
                    self._reserved -= worst
            if attempt + 1 == self.retry.transient_attempts:
                self._stopped = self._stopped or RemoteError(
                    f"the model endpoint failed {attempt + 1} times in a row ({failure.reason}: "
                    f"{failure.detail[:200]}); everything so far is kept: re-run the same command to resume"
                )
                raise self._stopped
            await asyncio.sleep(self.retry.delay(attempt, failure.retry_after))
        raise AssertionError("unreachable")
