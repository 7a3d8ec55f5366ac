"""Every model call goes through here: backends, response cache, limits, retries, usage and cost."""

from .backends import Backend, get_backend_class, registered_backends
from .cache import ResponseCache
from .client import LLMClient, Outcome, RetryPolicy
from .types import ChatRequest, ChatResponse, ParseError
from .usage import PriceTable, Usage

__all__ = [
    "Backend",
    "ChatRequest",
    "ChatResponse",
    "LLMClient",
    "Outcome",
    "ParseError",
    "PriceTable",
    "ResponseCache",
    "RetryPolicy",
    "Usage",
    "get_backend_class",
    "registered_backends",
]
