"""The backend interface and its registry: a backend is a class registered by name."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from ..errors import InputError
from .types import ChatRequest, ChatResponse

_REGISTRY: dict[str, type[Backend]] = {}


class Backend(Protocol):
    name: ClassVar[str]
    # Whether the model follows JSON-schema instructions well; small local models do not,
    # and get plain-text prompts and parsing instead.
    structured: bool
    model: str

    async def check(self) -> None:
        """Raise InputError if the backend cannot serve `model` (endpoint down, key rejected, no weights)."""

    async def complete(self, request: ChatRequest, seed: int) -> ChatResponse:
        """One attempt. Raise TransientError or PermanentError on faults."""

    async def aclose(self) -> None: ...


def register_backend(name: str):
    def wrap(cls: type[Any]) -> type[Any]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_backends() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}: choose one of {', '.join(sorted(_REGISTRY))}") from None


def _load_builtin() -> None:
    # Imported here so that `import dsgen.llm` stays light (the local backend pulls in torch lazily).
    from . import local_backend, openai_backend  # noqa: F401
