"""Backend for any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, OpenRouter, ...)."""

from __future__ import annotations

import os
from typing import Any

import openai

from ..errors import InputError
from .backends import register_backend
from .types import ChatRequest, ChatResponse, PermanentError, TransientError

OPENAI_URL = "https://api.openai.com/v1"
CHECK_TIMEOUT_S = 10.0


def _retry_after(err: openai.APIStatusError) -> float | None:
    value = err.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@register_backend("openai")
class OpenAIBackend:
    structured = True

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 60.0, **_: Any):
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
        key = os.environ.get("OPENAI_API_KEY")
        if not key and self.base_url.rstrip("/") == OPENAI_URL:
            raise InputError("OPENAI_API_KEY is not set: export it, or pass --base-url for a server that needs no key")
        # Local servers (vLLM, llama.cpp) accept any key; the client insists on one.
        self._client = openai.AsyncOpenAI(
            api_key=key or "no-key",
            base_url=self.base_url,
            timeout=timeout,
            max_retries=0,  # dsgen's own layer retries, and counts every attempt
            http_client=openai.DefaultAioHttpClient(),
        )

    async def check(self) -> None:
        where = f"endpoint {self.base_url}"
        try:
            page = await self._client.with_options(timeout=CHECK_TIMEOUT_S).models.list()
        except openai.AuthenticationError:
            raise InputError(f"{where} rejected the API key (401): check OPENAI_API_KEY") from None
        except openai.NotFoundError:
            return  # some servers have no /models route; the first call will tell
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise InputError(
                f"{where} does not answer ({type(e).__name__}): start the server or fix --base-url"
            ) from None
        except openai.APIStatusError as e:
            raise InputError(f"{where} answered {e.status_code} to GET /models: {e.message}") from None
        except Exception as e:  # noqa: BLE001 - a bad URL or a body that is not a model list
            raise InputError(
                f"{where} did not answer like an OpenAI-compatible server ({type(e).__name__}: {e})"
            ) from None
        served = [getattr(m, "id", None) for m in getattr(page, "data", None) or []]
        if served and self.model not in served and self.base_url.rstrip("/") != OPENAI_URL:
            shown = ", ".join(served[:5])
            raise InputError(f"{where} does not serve model {self.model!r} (it serves: {shown}): fix --model")

    async def complete(self, request: ChatRequest, seed: int) -> ChatResponse:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": seed,
        }
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = request.top_logprobs
        try:
            # The client's documented raw `post`, read as plain JSON, rather than
            # `chat.completions.create`: its typed transform of the params and model construction of
            # the result cost ~2 ms a call, which on 2 cores caps throughput well below what an
            # endpoint serves (bench/build_throughput.py).
            data = await self._client.post("/chat/completions", body=body, cast_to=object)
        except openai.RateLimitError as e:
            raise TransientError("rate_limited", e.message, _retry_after(e)) from None
        except openai.APITimeoutError as e:
            raise TransientError("timeout", str(e)) from None
        except openai.APIConnectionError as e:
            raise TransientError("connection_error", str(e)) from None
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise TransientError("server_error", f"{e.status_code} {e.message}", _retry_after(e)) from None
            fatal = e.status_code in (401, 403)
            detail = f"{e.status_code} {e.message}"
            if "response_format" in detail or "json_schema" in detail:
                detail += " (for servers without JSON-schema output, use --structured-output json_object or none)"
            raise PermanentError("bad_request", detail, fatal=fatal) from None
        except openai.APIResponseValidationError as e:
            raise TransientError("malformed_response", str(e)) from None
        return _read_completion(data, request.logprobs)

    async def aclose(self) -> None:
        await self._client.close()


def _read_completion(data: Any, want_logprobs: bool) -> ChatResponse:
    """The fields dsgen uses from a chat completion; a body of another shape is a transient fault."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        top = None
        if want_logprobs and (choice.get("logprobs") or {}).get("content"):
            positions = choice["logprobs"]["content"]
            top = [[(alt["token"], alt["logprob"]) for alt in pos["top_logprobs"]] for pos in positions]
        return ChatResponse(
            text=message.get("content") or "",
            finish_reason=choice.get("finish_reason"),
            refusal=message.get("refusal"),
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            top_logprobs=top,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise TransientError("malformed_response", f"not a chat completion ({type(e).__name__}: {e})") from None
