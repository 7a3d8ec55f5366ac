"""Upload a staged folder to the Hugging Face Hub: create the repo (private by default), one commit with
the whole folder (stale shards deleted in it), privacy and gating settings, an optional tag.

Every call is retried with backoff on 429, 5xx and connection faults. What the user must fix (token,
rights, names) is an InputError (exit 2); a Hub that keeps failing is a RemoteError (exit 4), and the
staged folder stays, so the same command retries. The token goes to huggingface_hub only: it is never
printed, logged or written.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..errors import InputError, RemoteError

T = TypeVar("T")
Gated = Literal["manual", "auto", "none"]
# Shards and the validation folder are replaced as a whole on every push: whatever the new folder does
# not hold again is deleted in the same commit.
STALE_PATTERNS = ["*/*.parquet", "validation/**", "provenance.json"]
ATTEMPTS = 5
BACKOFF_BASE_S = 0.5  # doubled each attempt, with full jitter


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit: str
    private: bool
    gated: Gated
    tag: str | None


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN, or the token saved by `hf auth login`
    if not token:
        raise InputError("no Hugging Face token: set HF_TOKEN to a write token, or run `hf auth login`")
    return token


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InputError(f"--repo {repo_id!r}: not a valid repo name ({str(e).splitlines()[0]})") from None
    if repo_id.count("/") != 1:
        raise InputError(f"--repo {repo_id!r}: give the namespace too, as in org/name")


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _hub_message(err: Exception) -> str:
    response = getattr(err, "response", None)
    message = getattr(response, "headers", {}).get("X-Error-Message") if response is not None else None
    return message or str(err).splitlines()[0]


def with_retries(what: str, fn: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """Run one Hub call; retry transient faults with exponential backoff and jitter (or Retry-After)."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(attempts):
        try:
            return fn()
        except HfHubHTTPError as e:
            status = _status(e)
            if status == 401:
                raise InputError(f"the Hub rejected the token while trying to {what} (401): set HF_TOKEN") from None
            if status == 403:
                raise InputError(
                    f"the Hub refused to {what} (403: {_hub_message(e)}): push to a namespace you can write to"
                ) from None
            if status is not None and status != 429 and status < 500:
                raise InputError(f"the Hub answered {status} to {what}: {_hub_message(e)}") from None
            failure: Exception = e
            retry_after = getattr(e.response, "headers", {}).get("Retry-After") if e.response is not None else None
        except (OSError, ConnectionError) as e:  # connection refused, reset, timeouts (httpx errors subclass)
            failure, retry_after = e, None
        except Exception as e:  # noqa: BLE001 - httpx transport errors are not OSErrors
            if type(e).__module__.startswith(("httpx", "httpcore")):
                failure, retry_after = e, None
            else:
                raise
        if attempt + 1 == attempts:
            raise RemoteError(
                f"the Hub failed {attempts} times in a row to {what} ({_hub_message(failure)}); "
                "the staged folder is kept: re-run the same command to retry"
            ) from None
        try:
            delay = float(retry_after) if retry_after is not None else random.uniform(0, BACKOFF_BASE_S * 2**attempt)
        except ValueError:
            delay = BACKOFF_BASE_S * 2**attempt
        time.sleep(min(delay, 60.0))
    raise AssertionError("unreachable")


def hub_card_metadata(repo_id: str, token: str) -> dict[str, Any] | None:
    """The metadata of the card the Hub repo has now (None when the repo or its card does not exist)."""
    from huggingface_hub import DatasetCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    def fetch() -> dict[str, Any] | None:
        try:
            path = hf_hub_download(repo_id, "README.md", repo_type="dataset", token=token)
        except (RepositoryNotFoundError, EntryNotFoundError, RevisionNotFoundError):
            return None
        return DatasetCard.load(Path(path)).data.to_dict()

    return with_retries(f"read the card of {repo_id}", fetch)


def upload(folder: Path, repo_id: str, token: str, *, private: bool, gated: Gated, tag: str | None) -> PushResult:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = with_retries(
        f"create {repo_id}", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    )
    commit = with_retries(
        f"upload to {repo_id}",
        lambda: api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message="dsgen push",
            delete_patterns=STALE_PATTERNS,
        ),
    )
    # Settled explicitly on every push, so an existing public or ungated repo is brought in line.
    with_retries(
        f"set the privacy and gating of {repo_id}",
        lambda: api.update_repo_settings(
            repo_id, repo_type="dataset", private=private, gated=False if gated == "none" else gated
        ),
    )
    if tag:
        with_retries(
            f"tag {repo_id} {tag}",
            lambda: api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="dataset"),
        )
    return PushResult(repo_id, str(repo), commit.oid, private, gated, tag)
