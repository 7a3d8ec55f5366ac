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
# What a push replaces as a whole (whatever the new folder does not hold again is deleted in the same
# commit): the shards of the domains dsgen published there, and its own files.
OWN_FILES = ["validation/**", "provenance.json"]


def stale_patterns(domains: list[str]) -> list[str]:
    return [f"{d}/*.parquet" for d in sorted(set(domains))] + OWN_FILES


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


def _transport_fault(err: BaseException | None) -> bool:
    """httpx/httpcore errors, and huggingface_hub's RuntimeError around a failed LFS upload."""
    from huggingface_hub.errors import HfHubHTTPError

    while err is not None:
        if type(err).__module__.startswith(("httpx", "httpcore")) or isinstance(err, HfHubHTTPError | OSError):
            return True
        err = err.__cause__ or err.__context__
    return False


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
            if status is not None and status not in (408, 429) and status < 500:
                raise InputError(f"the Hub answered {status} to {what}: {_hub_message(e)}") from None
            failure: Exception = e
            retry_after = getattr(e.response, "headers", {}).get("Retry-After") if e.response is not None else None
        except (OSError, ConnectionError) as e:  # connection refused, reset, timeouts
            failure, retry_after = e, None
        except Exception as e:  # noqa: BLE001 - transport errors of httpx, or LFS uploads wrapped in RuntimeError
            if not _transport_fault(e):
                raise
            failure, retry_after = e, None
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
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .stage import parse_card

    def fetch() -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, "README.md", repo_type="dataset", token=token))
        except LocalEntryNotFoundError as e:  # the Hub could not be reached (or answered 5xx): not "no card"
            raise ConnectionError(str(e).splitlines()[0]) from None
        except (RepositoryNotFoundError, EntryNotFoundError, RevisionNotFoundError):
            return None

    path = with_retries(f"read the card of {repo_id}", fetch)
    return None if path is None else parse_card(path, f"the card of {repo_id} on the Hub")


def repo_files(repo_id: str, token: str) -> list[str]:
    """The repo's files at main ([] when the repo does not exist)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    def fetch() -> list[str]:
        try:
            return HfApi(token=token).list_repo_files(repo_id, repo_type="dataset")
        except RepositoryNotFoundError:
            return []

    return with_retries(f"list the files of {repo_id}", fetch)


def tag_exists(repo_id: str, tag: str, token: str) -> bool:
    from huggingface_hub import HfApi

    return with_retries(
        f"look up tag {tag} of {repo_id}",
        lambda: HfApi(token=token).revision_exists(repo_id, tag, repo_type="dataset"),
    )


def upload(
    folder: Path,
    repo_id: str,
    token: str,
    *,
    private: bool,
    gated: Gated,
    tag: str | None,
    stale: list[str],
) -> PushResult:
    """Privacy and gating are settled *before* any data goes up: the repo is created (or made) private and
    gated first, and made public, when asked, only once the data and its gate are in place."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = with_retries(
        f"create {repo_id}", lambda: api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    )
    with_retries(
        f"make {repo_id} private and set its gating",
        lambda: api.update_repo_settings(
            repo_id, repo_type="dataset", private=True, gated=False if gated == "none" else gated
        ),
    )
    commit = with_retries(
        f"upload to {repo_id}",
        lambda: api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message="dsgen push",
            delete_patterns=stale,
        ),
    )
    if tag:
        with_retries(
            f"tag {repo_id} {tag}",
            lambda: api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="dataset"),
        )
    if not private:
        with_retries(
            f"make {repo_id} public", lambda: api.update_repo_settings(repo_id, repo_type="dataset", private=False)
        )
    return PushResult(repo_id, str(repo), commit.oid, private, gated, tag)
