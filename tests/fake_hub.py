"""A fake Hugging Face Hub for tests: dataset repos only, kept in memory, served on 127.0.0.1 only.

It speaks enough of the Hub's HTTP API for huggingface_hub 2.4.0 and datasets 5.2.0 to create repos, commit
(regular files inline, `.parquet` files through the real Git LFS "basic" transfer: batch, then PUT),
change privacy/gating, tag, read repo info, trees and files, and `datasets.load_dataset` a repo. Xet is not
spoken: clients must run with HF_HUB_DISABLE_XET=1 (`hub_env` and `patch_clients` set it).

Faults are scripted per operation: FakeHubConfig(faults={"commit": [429, 500]}) answers the first commit
429 (Retry-After: 0), the second 500, then commits normally. Measured with huggingface_hub 2.4.0: it
retries 408/429/500/502/503/504 itself (up to 5 times, sleeping 1, 2, 4... s; Retry-After + 1 s on 429)
for "preupload", "lfs_batch", "lfs_upload", "tree" and "resolve" (hf_hub_download's HEAD), so a few faults
there are absorbed. It does not retry "create", "commit" (create_commit, and upload_folder without hf_xet),
"settings", "tag", "info" or "whoami": those faults reach the caller as HfHubHTTPError.

    with FakeHub(FakeHubConfig(faults={"commit": [503]})) as hub:
        patch_clients(monkeypatch, hub.endpoint, tmp_path / "hf")   # in-process clients
        env = hub_env(hub.endpoint, tmp_path / "hf")                # for a subprocess (add HF_TOKEN)
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import yaml
from aiohttp import web

from tests.serving import BackgroundServer

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
BAD_TOKEN = "Invalid credentials in Authorization header"  # the exact text huggingface_hub maps to a plain 401
REPO_OPS = {"info": "GET", "settings": "PUT", "tag": "POST", "preupload": "POST", "commit": "POST", "tree": "GET"}


@dataclass
class FakeHubConfig:
    token: str | None = "hf_test_token"  # None: no auth checks at all
    user: str = "tester"
    orgs: tuple[str, ...] = ("em-lab",)
    # operation -> statuses, one per request. Operations: create, preupload, lfs_batch, lfs_upload (the PUT),
    # commit, settings, tag, info (repo_info), resolve (file HEAD/GET), tree, whoami, validate_yaml.
    faults: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Commit:
    sha: str
    message: str
    files: dict[str, bytes]  # the full tree after this commit
    date: str


@dataclass
class Repo:
    id: str
    private: bool = False
    gated: bool | str = False  # False, "manual" or "auto"
    foreign: bool = False  # belongs to someone else: readable, every write answers 403
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit sha
    commits: list[Commit] = field(default_factory=list)

    @property
    def files(self) -> dict[str, bytes]:
        return self.commits[-1].files

    @property
    def card_data(self) -> dict | None:
        """The YAML front matter of README.md at main, or None."""
        return card_data(self.files)

    def commit(self, message: str, files: dict[str, bytes]) -> Commit:
        digest = hashlib.sha1(f"{self.id}\n{len(self.commits)}\n{message}\n".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        self.commits.append(Commit(digest.hexdigest(), message, files, now))
        return self.commits[-1]

    def resolve(self, rev: str) -> Commit:
        """A branch (main only), tag or full commit sha, optionally as refs/heads/... or refs/tags/..."""
        rev = rev.removeprefix("refs/heads/").removeprefix("refs/tags/")
        sha = self.commits[-1].sha if rev == "main" else self.tags.get(rev, rev)
        for commit in self.commits:
            if commit.sha == sha:
                return commit
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def card_data(files: dict[str, bytes]) -> dict | None:
    text = files.get("README.md", b"").decode("utf-8", "replace")
    if not text.startswith("---"):
        return None
    data = yaml.safe_load(text[3:].split("\n---", 1)[0])
    return data if isinstance(data, dict) else None


def is_lfs(path: str) -> bool:
    return path.endswith(".parquet")  # the preupload answer: these go through LFS, the rest inline


def file_meta(path: str, data: bytes) -> tuple[str, dict | None]:
    """(git oid, lfs info or None) as the Hub reports them: an LFS file's oid is its pointer file's."""
    blob = lambda b: hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()  # noqa: E731
    if not is_lfs(path):
        return blob(data), None
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    return blob(pointer), {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}


class HubError(Exception):
    """Raised by a handler: the error answer. huggingface_hub picks its exception class from the
    X-Error-Code / X-Error-Message headers (HEAD answers have no body)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        h = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        self.response = web.json_response({"error": message}, status=status, headers=h)


class FakeHub(BackgroundServer):
    def __init__(self, config: FakeHubConfig | None = None):
        super().__init__()
        self.config = config or FakeHubConfig()
        self.repos: dict[str, Repo] = {}
        self.calls: Counter[str] = Counter()  # operation -> requests that arrived (faulted ones included)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._log: list[str] = []
        self._lfs: dict[str, bytes] = {}  # sha256 -> uploaded LFS object
        self._faults = {op: list(statuses) for op, statuses in self.config.faults.items()}

    def inject(self, op: str, statuses: list[int]) -> None:
        """Script more faults on a running server."""
        self._faults[op] = list(statuses)

    # ---- test helpers ----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_foreign_repo(self, repo_id: str, files: dict[str, bytes]) -> Repo:
        """A repo that exists but belongs to someone else: reads work, writes answer 403."""
        repo = Repo(repo_id, foreign=True)
        repo.commit("initial commit", {".gitattributes": GITATTRIBUTES, **files})
        self.repos[repo_id] = repo
        return repo

    def request_log_text(self) -> str:
        """Every request line, header and body (base64 file contents also decoded), as one string, for
        checks that a secret leaks nowhere. The Authorization header is left out: it is where the token
        belongs."""
        return "\n".join(self._log)

    def _check_namespace(self, repo_id: str) -> None:
        repo, namespace = self.repos.get(repo_id), repo_id.split("/")[0]
        if (repo and repo.foreign) or namespace not in (self.config.user, *self.config.orgs):
            msg = f'You don\'t have the rights to create a dataset under the namespace "{namespace}"'
            raise HubError(403, msg)

    # ---- routing ---------------------------------------------------------------------------

    def _match(self, method: str, segs: list[str]) -> tuple[str, str | None, list[str]]:
        """(operation, repo id, rest of the path) for a request; operation "unknown" answers 404."""
        if method == "POST" and segs == ["api", "repos", "create"]:
            return "create", None, []
        if method == "POST" and segs == ["api", "validate-yaml"]:
            return "validate_yaml", None, []
        if method == "GET" and segs == ["api", "whoami-v2"]:
            return "whoami", None, []
        if len(segs) >= 4 and segs[:2] == ["api", "datasets"]:  # /api/datasets/{ns}/{name}[/{action}/...]
            op = segs[4] if len(segs) > 4 and segs[4] != "revision" else "info"
            if REPO_OPS.get(op) == method:
                return op, f"{segs[2]}/{segs[3]}", segs[5:]
        if segs[:1] == ["datasets"] and segs[3:] == ["info", "lfs", "objects", "batch"] and method == "POST":
            return "lfs_batch", f"{segs[1]}/{segs[2].removesuffix('.git')}", []
        if len(segs) >= 6 and segs[0] == "datasets" and segs[3] == "resolve" and method in ("GET", "HEAD"):
            return "resolve", f"{segs[1]}/{segs[2]}", segs[4:]
        if len(segs) == 2 and segs[0] == "__lfs" and method == "PUT":  # the upload href of the LFS batch
            return "lfs_upload", None, segs[1:]
        return "unknown", None, []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        # Revisions come quoted as one segment ("refs%2Fheads%2Fmain"): split first, then unquote.
        segs = [unquote(s) for s in request.rel_url.raw_path.strip("/").split("/")]
        self.requests.append((request.method, request.path))
        headers = "".join(f"{k}: {v}\n" for k, v in request.headers.items() if k.lower() != "authorization")
        self._log.append(f"{request.method} {request.path_qs}\n{headers}\n{body.decode('utf-8', 'replace')}")
        op, repo_id, rest = self._match(request.method, segs)
        self.calls[op] += 1
        try:
            token = self.config.token
            if token and op != "lfs_upload" and request.headers.get("Authorization") != f"Bearer {token}":
                raise HubError(401, BAD_TOKEN)  # the LFS upload href is presigned: no token, as on the real Hub
            if self._faults.get(op):
                status = self._faults[op].pop(0)
                retry = {"Retry-After": "0"} if status == 429 else None
                raise HubError(status, f"fake hub: scripted {status} for {op}", headers=retry)
            if op == "unknown":
                raise HubError(404, f"fake hub: no route for {request.method} {request.path}")
            repo = None
            if repo_id is not None:
                repo = self.repos.get(repo_id)
                if repo is None:
                    raise HubError(404, "Repository not found", "RepoNotFound")
                if op in ("settings", "tag", "preupload", "commit", "lfs_batch"):
                    self._check_namespace(repo_id)
            return getattr(self, f"_{op}")(request, body, repo, rest)
        except HubError as e:
            return e.response

    # ---- account and repo endpoints ----------------------------------------------------------

    def _whoami(self, request, body, repo, rest):
        c = self.config
        return web.json_response(
            {
                "type": "user",
                "name": c.user,
                "fullname": c.user,
                "orgs": [{"type": "org", "name": o} for o in c.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
            }
        )

    def _validate_yaml(self, request, body, repo, rest):
        return web.json_response({"errors": [], "warnings": []})

    def _create(self, request, body, repo, rest):
        p = json.loads(body)
        if (p.get("type") or "model") != "dataset":
            raise HubError(400, "fake hub: only dataset repos are supported")
        repo_id = f"{p.get('organization') or self.config.user}/{p['name']}"
        url = f"{self.endpoint}/datasets/{repo_id}"
        self._check_namespace(repo_id)  # on 403, create_repo(exist_ok=True) tries repo_info: a foreign repo passes
        if repo_id in self.repos:  # huggingface_hub reads "url" even from this 409 when exist_ok=True
            return web.json_response({"error": "You already created this dataset repo", "url": url}, status=409)
        repo = self.repos[repo_id] = Repo(repo_id, private=p.get("visibility") == "private" or bool(p.get("private")))
        repo.commit("initial commit", {".gitattributes": GITATTRIBUTES})
        return web.json_response({"url": url, "name": repo_id, "id": repo_id})

    def _settings(self, request, body, repo, rest):
        p = json.loads(body or b"{}")
        if "gated" in p:
            repo.gated = p["gated"]
        if "visibility" in p:
            repo.private = p["visibility"] == "private"
        if "private" in p:
            repo.private = bool(p["private"])
        return web.json_response({})

    def _tag(self, request, body, repo, rest):
        commit = repo.resolve(rest[0] if rest else "main")
        tag = json.loads(body)["tag"]
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.sha
        return web.json_response({})

    def _info(self, request, body, repo, rest):
        commit = repo.resolve(rest[0] if rest else "main")
        # The fields huggingface_hub's DatasetInfo and datasets use; no per-file sizes (files_metadata=True).
        info = {
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        card = card_data(commit.files)  # the card at the asked revision
        if card is not None:
            info["cardData"] = card
        return web.json_response(info)

    # ---- trees and files -------------------------------------------------------------------

    @staticmethod
    def _entry(path: str, files: dict[str, bytes], commit: Commit) -> dict:
        if path not in files:  # a directory
            oid = hashlib.sha1(f"tree {commit.sha} {path}".encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        oid, lfs = file_meta(path, files[path])
        return {"type": "file", "oid": oid, "size": len(files[path]), "path": path, **({"lfs": lfs} if lfs else {})}

    @staticmethod
    def _dirs(files: dict[str, bytes]) -> set[str]:
        return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}

    def _tree(self, request, body, repo, rest):
        commit = repo.resolve(rest[0] if rest else "main")
        path, dirs = "/".join(rest[1:]).strip("/"), self._dirs(commit.files)
        if path and path not in dirs:
            raise HubError(404, f"{path} does not exist", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        prefix = path + "/" if path else ""
        wanted = lambda p: p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])  # noqa: E731
        paths = [d for d in sorted(dirs) if wanted(d)] + [p for p in sorted(commit.files) if wanted(p)]
        # One page for everything: no `Link: <...>; rel="next"` header. No lastCommit (expand=True) either.
        entries = [self._entry(p, commit.files, commit) for p in paths]
        return web.json_response(entries, headers={"X-Repo-Commit": commit.sha})

    def _resolve(self, request, body, repo, rest):
        commit = repo.resolve(rest[0])
        path = "/".join(rest[1:])
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        data = commit.files[path]
        oid, lfs = file_meta(path, data)
        etag = f'"{lfs["oid"] if lfs else oid}"'
        headers = {"X-Repo-Commit": commit.sha, "ETag": etag, "Content-Type": "application/octet-stream"}
        if lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
        # Whole files only: load_dataset downloads them; Range reads (streaming=True) are not served.
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        return web.Response(body=data, headers=headers)

    # ---- uploads ---------------------------------------------------------------------------

    def _preupload(self, request, body, repo, rest):
        p, head = json.loads(body), repo.commits[-1]
        out = []
        for f in p["files"]:
            self._log.append(base64.b64decode(f.get("sample", "")).decode("utf-8", "replace"))
            answer = {"path": f["path"], "uploadMode": "lfs" if is_lfs(f["path"]) else "regular", "shouldIgnore": False}
            if f["path"] in head.files:  # the current oid: the client drops files that did not change
                oid, lfs = file_meta(f["path"], head.files[f["path"]])
                answer["oid"] = lfs["oid"] if lfs else oid
            out.append(answer)
        return web.json_response({"files": out, "commitOid": head.sha})

    def _lfs_batch(self, request, body, repo, rest):
        objects = []
        for o in json.loads(body).get("objects", []):
            entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self._lfs:  # no "actions": the client skips objects the server already has
                href = f"{self.endpoint}/__lfs/{o['oid']}"
                entry["actions"] = {"upload": {"href": href}}  # no "verify" action: the client skips it
            objects.append(entry)
        return web.json_response({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, request, body, repo, rest):
        if hashlib.sha256(body).hexdigest() != rest[0]:
            raise HubError(400, "fake hub: sha256 mismatch")
        self._lfs[rest[0]] = body
        return web.Response(status=200)

    def _commit(self, request, body, repo, rest):
        if (rest[0] if rest else "main") not in ("main", "refs/heads/main"):
            raise HubError(404, "fake hub: only the main branch exists", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
        parent = header.get("parentCommit")
        if parent and not repo.commits[-1].sha.startswith(parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.files)
        for item in lines[1:]:
            kind, v = item["key"], item["value"]
            if kind == "file":
                files[v["path"]] = base64.b64decode(v["content"])
                self._log.append(files[v["path"]].decode("utf-8", "replace"))
            elif kind == "lfsFile":
                if v["oid"] not in self._lfs:
                    raise HubError(400, f"fake hub: LFS object {v['oid']} was never uploaded")
                files[v["path"]] = self._lfs[v["oid"]]
            elif kind == "deletedFile":
                if files.pop(v["path"], None) is None:
                    raise HubError(404, f"{v['path']} does not exist", "EntryNotFound")
            elif kind == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(v["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, f"fake hub: unsupported commit operation {kind}")
        commit = repo.commit(header.get("summary", ""), files)
        url = f"{self.endpoint}/datasets/{repo.id}/commit/{commit.sha}"
        return web.json_response(
            {"success": True, "commitOid": commit.sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}
        )

    # ---- lifecycle (as in tests/fake_openai.py) -----------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app


# ---- pointing the real clients at the fake ---------------------------------------------------


def hub_env(endpoint: str, home: Path) -> dict[str, str]:
    """Environment for a subprocess that talks to the fake hub (merge into os.environ; add HF_TOKEN).
    datasets there still tries its parquet-export lookup at http://datasets-server.127.0.0.1:PORT, which
    fails at once and is ignored (USE_PARQUET_EXPORT has no environment variable)."""
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "10",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # else datasets HEADs a real S3 URL on load
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }


def patch_clients(monkeypatch, endpoint: str, home: Path) -> None:
    """Point the already-imported huggingface_hub and datasets at the fake hub for one test. Both read
    their settings once, at import, so setting the environment alone is not enough: the module constants
    (and HfApi objects built at import) are patched too. Also undoes conftest's HF_HUB_OFFLINE=1."""
    from urllib.parse import urlsplit

    for key, value in hub_env(endpoint, home).items():  # first, so that a first import below reads them
        monkeypatch.setenv(key, value)
    import datasets
    import huggingface_hub
    from huggingface_hub import HfFileSystem, constants

    hub_cache = str(home / "hub")
    for name, value in {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),  # never the developer's saved token
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(constants, name, value)
    # `huggingface_hub.create_repo`, `whoami`, ... are methods of this instance, built with the old endpoint.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    HfFileSystem.clear_instance_cache()  # cached per endpoint, and a port can be reused by a later server

    cache = home / "datasets"
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "USE_PARQUET_EXPORT": False,  # no datasets-server lookup
        "HF_UPDATE_DOWNLOAD_COUNTS": False,
        "HF_CACHE_HOME": str(home),
        "HF_DATASETS_CACHE": cache,
        "HF_MODULES_CACHE": home / "modules",
        "DOWNLOADED_DATASETS_PATH": cache / "downloads",
        "EXTRACTED_DATASETS_PATH": cache / "downloads" / "extracted",
    }.items():
        monkeypatch.setattr(datasets.config, name, value)
