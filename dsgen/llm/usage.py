"""Usage accounting (requests, cache hits, tokens, cost) and the price table it costs with."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0, description="USD per million prompt tokens")
    output: float = Field(ge=0, description="USD per million completion tokens")


class PriceTable:
    """Model name -> price. The packaged table, overridden by a user's YAML file."""

    def __init__(self, prices: dict[str, Price]):
        self.prices = prices

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        text = resources.files("dsgen.llm").joinpath("prices.yaml").read_text(encoding="utf-8")
        table = cls._parse(yaml.safe_load(text), "dsgen/llm/prices.yaml")
        if override is not None:
            try:
                raw = yaml.safe_load(override.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                raise InputError(f"{override}: cannot read price table: {e}".splitlines()[0]) from None
            table.update(cls._parse(raw, str(override)))
        return cls(table)

    @staticmethod
    def _parse(raw: object, where: str) -> dict[str, Price]:
        if not isinstance(raw, dict):
            raise InputError(f"{where}: a price table maps model names to {{input: ..., output: ...}}")
        out = {}
        for model, price in raw.items():
            try:
                out[str(model)] = Price.model_validate(price)
            except ValidationError as e:
                err = e.errors()[0]
                raise InputError(f"{where}: {model}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return out

    def get(self, model: str) -> Price | None:
        return self.prices.get(model)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


class StageUsage(BaseModel):
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Usage(BaseModel):
    """Counts every attempt sent to a backend, and every answer served from the cache."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: dict[str, int] = Field(default_factory=dict, description="failed attempts by reason")
    by_stage: dict[str, StageUsage] = Field(default_factory=dict)

    def _stage(self, tag: str) -> StageUsage:
        return self.by_stage.setdefault(tag or "other", StageUsage())

    def add_request(self, tag: str, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        for u in (self, self._stage(tag)):
            u.requests += 1
            u.prompt_tokens += prompt_tokens
            u.completion_tokens += completion_tokens
            u.cost_usd += cost

    def add_failed_request(self, tag: str, reason: str) -> None:
        """An attempt that got no answer (429, 5xx, timeout, 400...)."""
        self.requests += 1
        self._stage(tag).requests += 1
        self.add_error(tag, reason)

    def add_error(self, tag: str, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def add_cache_hit(self, tag: str) -> None:
        self.cache_hits += 1
        self._stage(tag).cache_hits += 1

    def add(self, other: Usage) -> None:
        """Fold another client's usage into this one (two judging passes of one invocation)."""
        fields = ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd")
        pairs = [(self, other)] + [(self._stage(tag), stage) for tag, stage in other.by_stage.items()]
        for mine, theirs in pairs:
            for f in fields:
                setattr(mine, f, getattr(mine, f) + getattr(theirs, f))
        for reason, n in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + n


def print_cost_table(
    labels: list[tuple[str, int]], rows: list[dict[str, Any]], total: dict[str, Any], out: Any
) -> None:
    """A dry run's plan: label columns (name, width) then calls, prompt and completion tokens, cost."""
    width = sum(w for _, w in labels)
    head = "".join(f"{name:<{w}}" for name, w in labels)
    print(f"{head}{'calls':>8}{'prompt tok':>12}{'compl. tok':>12}{'cost $':>10}", file=out)
    for r in rows:
        cells = "".join(f"{r[name]:<{w}}" for name, w in labels)
        print(
            f"{cells}{r['calls']:>8}{r['prompt_tokens']:>12}{r['completion_tokens_max']:>12}{r['cost_usd_max']:>10.4f}",
            file=out,
        )
    print(
        f"{'total':<{width}}{total['calls']:>8}{total['prompt_tokens']:>12}{total['completion_tokens']:>12}"
        f"{total['cost_usd']:>10.4f}",
        file=out,
    )
