"""Setting up the LLM layer for a command: the backend(s), the response cache and the client."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..config import LLMConfig
from ..errors import InputError
from .backends import Backend, get_backend_class
from .cache import ResponseCache
from .client import LLMClient, RetryPolicy
from .types import ChatRequest, ChatResponse
from .usage import PriceTable


def open_cache(path: Path) -> ResponseCache:
    try:
        return ResponseCache(path)
    except (sqlite3.Error, OSError) as e:
        raise InputError(f"--cache {path}: cannot open the response cache ({e})") from None


class ModelRouter:
    """One backend per model behind the Backend interface, so one client (one budget, one set of
    limits) can call several models, e.g. a panel of judges."""

    def __init__(self, backends: dict[str, Backend]):
        self.backends = backends
        first = next(iter(backends.values()))
        self.name = first.name
        self.structured = all(b.structured for b in backends.values())
        self.model = ",".join(backends)

    async def check(self) -> None:
        for backend in self.backends.values():
            await backend.check()

    async def complete(self, request: ChatRequest, seed: int) -> ChatResponse:
        return await self.backends[request.model].complete(request, seed)

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()


def make_backend(cfg: LLMConfig, models: list[str]) -> Backend:
    cls = get_backend_class(cfg.resolved_backend())
    backends = {m: cls(model=m, base_url=cfg.base_url, timeout=cfg.timeout) for m in models}
    return backends[models[0]] if len(models) == 1 else ModelRouter(backends)  # type: ignore[return-value]


def make_client(
    cfg: LLMConfig, backend: Backend, cache: ResponseCache, prices: PriceTable, spent_before: float = 0.0, **kw: Any
) -> LLMClient:
    return LLMClient(
        backend,
        cache,
        prices=prices,
        concurrency=cfg.concurrency,
        retry=RetryPolicy(transient_attempts=cfg.transient_attempts, parse_attempts=cfg.parse_attempts),
        requests_per_minute=cfg.requests_per_minute,
        tokens_per_minute=cfg.tokens_per_minute,
        max_cost=cfg.max_cost,
        spent_before=spent_before,
        retry_failed=cfg.retry_failed,
        **kw,
    )


def check_prices(cfg: LLMConfig, models: list[str], prices: PriceTable) -> None:
    if cfg.resolved_backend() == "local" or cfg.max_cost is None:
        return
    for model in models:
        if prices.get(model) is None:
            raise InputError(
                f"no price known for model {model!r}, so --max-cost cannot be enforced: add it with --prices FILE"
            )
