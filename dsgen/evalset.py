"""The free-form evaluation questions (Betley et al. 2025; Chua et al. 2025), shipped as data.

validate keeps training rows from near-copying them; the reference runs ask them.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError

EVAL_FILE = "eval/free_form.yaml"


class EvalQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    source: str
    question: str = Field(min_length=3)
    system: str | None = None


class EvalSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str
    questions: list[EvalQuestion] = Field(min_length=1)


def eval_file() -> Path:
    return Path(str(resources.files("dsgen").joinpath("templates", EVAL_FILE)))


@cache
def load_eval_set(path: Path | None = None) -> EvalSet:
    path = path or eval_file()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return EvalSet.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise InputError(f"{path}: not a valid evaluation question set ({str(e).splitlines()[0]})") from None


def eval_set_hash(path: Path | None = None) -> str:
    return hashlib.sha256((path or eval_file()).read_bytes()).hexdigest()
