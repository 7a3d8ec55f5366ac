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
        served = [m.id for m in page.data]
        if served and self.model not in served and self.base_url.rstrip("/") != OPENAI_URL:
            shown = ", ".join(served[:5])
            raise InputError(f"{where} does not serve model {self.model!r} (it serves: {shown}): fix --model")

    async def complete(self, request: ChatRequest, seed: int) -> ChatResponse:
        kwargs: dict[str, Any] = {}
        if request.response_format is not None:
            kwargs["response_format"] = request.response_format
        if request.logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = request.top_logprobs
        try:
            resp = await self._client.chat.completions.create(
                model=request.model,
                messages=request.messages,  # type: ignore[arg-type]
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=request.max_tokens,
                seed=seed,
                **kwargs,
            )
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
            raise PermanentError("bad_request", f"{e.status_code} {e.message}", fatal=fatal) from None
        except openai.APIResponseValidationError as e:
            raise TransientError("malformed_response", str(e)) from None
        if not resp.choices:
            raise TransientError("malformed_response", "no choices in the response")
        choice = resp.choices[0]
        top = None
        if request.logprobs and choice.logprobs is not None and choice.logprobs.content:
            top = [[(alt.token, alt.logprob) for alt in pos.top_logprobs] for pos in choice.logprobs.content]
        usage = resp.usage
        return ChatResponse(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            refusal=getattr(choice.message, "refusal", None),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            top_logprobs=top,
        )

    async def aclose(self) -> None:
        await self._client.close()
