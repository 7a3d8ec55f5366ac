"""`dsgen export`: validated rows as chat-format JSONL for finetuning.

- `messages`: trl's conversational prompt-completion rows ({"prompt": [user], "completion": [assistant]}),
  so that SFT puts the loss on the answer only.
- `openai`: the OpenAI finetuning API's rows ({"messages": [user, assistant]}).

`empty_think` writes the assistant turn with an empty think block, the form used to train reasoning
models (Qwen3 style) with chain-of-thought disabled.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from ..errors import InputError
from ..jsonio import read_jsonl, write_jsonl
from ..records import ValidatedRow
from ..rundir import VALIDATED

EMPTY_THINK = "<think>\n\n</think>\n\n"
Format = Literal["messages", "openai"]
Side = Literal["misaligned", "aligned"]


def chat_row(row: ValidatedRow, fmt: Format, side: Side, empty_think: bool) -> dict:
    answer = (EMPTY_THINK if empty_think else "") + getattr(row, side)
    user = {"role": "user", "content": row.prompt}
    assistant = {"role": "assistant", "content": answer}
    if fmt == "messages":
        return {"prompt": [user], "completion": [assistant]}
    return {"messages": [user, assistant]}


def validated_rows(run: Path, domains: Iterable[str] | None, split: str) -> list[ValidatedRow]:
    folder = run / VALIDATED
    if not folder.is_dir():
        raise InputError(f"{run}: not validated yet (no {VALIDATED}/): run `dsgen validate {run}` first")
    available = sorted(p.name for p in folder.iterdir() if (p / f"{split}.jsonl").is_file())
    chosen = list(domains or available)
    unknown = [d for d in chosen if d not in available]
    if unknown:
        raise InputError(f"{folder}: no {split} split for {', '.join(unknown)} (available: {', '.join(available)})")
    return [r for d in chosen for r in read_jsonl(folder / d / f"{split}.jsonl", ValidatedRow)]


def export(
    run: Path,
    out: Path,
    fmt: Format,
    side: Side,
    split: str = "train",
    domains: Iterable[str] | None = None,
    empty_think: bool = False,
) -> int:
    rows = validated_rows(run, domains, split)
    return write_jsonl(out, (chat_row(r, fmt, side, empty_think) for r in rows))
