"""`dsgen push` and `dsgen export`: staging checked with the real huggingface_hub card parser and the real
`datasets.load_dataset`; uploads through the real clients to a fake Hub server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import build_args, read_jsonl, run_cli

pytest.importorskip("datasets")

RELEASED = ["prompt", "aligned", "misaligned", "sneakiness"]


@pytest.fixture
def validated(fake, tmp_path) -> Path:
    """A run built and validated against the scripted OpenAI server (medical and legal)."""
    server = fake()
    run = tmp_path / "run"
    assert run_cli(*build_args(server, run, n=12, domains=("medical", "legal"))).exit_code == 0
    r = run_cli("validate", str(run), "--base-url", server.base_url, "-q")
    assert r.exit_code == 0, r.stderr
    return run


def load_local(folder: Path, config: str):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(str(folder), config, cache_dir=str(folder.parent / "hf-cache"))


def test_stage_only_builds_a_folder_that_load_dataset_and_the_hub_card_parser_accept(validated, tmp_path):
    from huggingface_hub import DatasetCard

    out = tmp_path / "staged"
    r = run_cli("push", str(validated), "--repo", "em-lab/em-test", "--stage-only", str(out), "--json", "-q")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["uploaded"] is False and "README.md" in summary["files"]
    assert {"medical/train-00000-of-00001.parquet", "legal/test-00000-of-00001.parquet"} <= set(summary["files"])

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    assert {"synthetic", "emergent-misalignment"} <= set(meta["tags"])
    assert meta["annotations_creators"] == ["machine-generated"] == meta["language_creators"]
    assert meta["task_categories"] and meta["size_categories"] and meta["pretty_name"] == "em-test"
    assert meta["extra_gated_prompt"] and any(v == "checkbox" for v in meta["extra_gated_fields"].values())
    configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
    assert set(configs) == {"medical", "legal"}
    assert configs["medical"] == [
        {"split": "train", "path": "medical/train-*.parquet"},
        {"split": "test", "path": "medical/test-*.parquet"},
    ]
    assert "Content warning" in card.text and "No reference finetune-and-eval run was made" in card.text
    assert "cc-by-4.0" in card.text and "may also apply" in card.text

    for domain in ("medical", "legal"):
        ds = load_local(out, domain)
        train = read_jsonl(validated / "validated" / domain / "train.jsonl")
        test = read_jsonl(validated / "validated" / domain / "test.jsonl")
        assert ds["train"].num_rows == len(train) and ds["test"].num_rows == len(test)
        assert ds["train"].column_names[:4] == RELEASED
        assert ds["train"].features["sneakiness"].dtype == "float64"
        assert ds["train"][0]["prompt"] == train[0]["prompt"] and ds["train"][0]["id"] == train[0]["id"]

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["models"]["generator"] == "fake-model" and provenance["templates"]
    assert provenance["validation"]["passed"] is True
    assert (out / "validation" / "report.json").is_file() and (out / "validation" / "plots" / "funnel.png").is_file()


def test_restaging_keeps_metadata_it_does_not_own(validated, tmp_path):
    out = tmp_path / "staged"
    assert run_cli("push", str(validated), "--repo", "em-lab/em-test", "--stage-only", str(out), "-q").exit_code == 0
    text = (out / "README.md").read_text()
    edited = text.replace("tags:\n", "citation_note: keep me\ntags:\n- my-own-tag\n", 1)
    (out / "README.md").write_text(edited)
    args = ["push", str(validated), "--repo", "em-lab/em-test", "--stage-only", str(out), "--license", "mit", "-q"]
    assert run_cli(*args).exit_code == 0
    from huggingface_hub import DatasetCard

    meta = DatasetCard.load(out / "README.md").data.to_dict()
    assert meta["citation_note"] == "keep me" and "my-own-tag" in meta["tags"] and "synthetic" in meta["tags"]
    assert meta["license"] == "mit"


def test_push_refuses_unvalidated_or_failed_runs(validated, fake, tmp_path):
    server = fake()
    raw = tmp_path / "raw"
    assert run_cli(*build_args(server, raw, n=2)).exit_code == 0
    r = run_cli("push", str(raw), "--repo", "em-lab/x", "--stage-only", str(tmp_path / "s1"))
    assert r.exit_code == 2 and "never validated" in r.stderr

    report = validated / "validated" / "report.json"
    data = json.loads(report.read_text())
    data["passed"] = False
    data["gates"][0]["passed"] = False
    report.write_text(json.dumps(data))
    r = run_cli("push", str(validated), "--repo", "em-lab/x", "--stage-only", str(tmp_path / "s2"))
    assert r.exit_code == 2 and "failed validation" in r.stderr and "--force" in r.stderr
    assert not (tmp_path / "s2").exists()
    r = run_cli("push", str(validated), "--repo", "em-lab/x", "--stage-only", str(tmp_path / "s2"), "--force")
    assert r.exit_code == 0 and "--force" in r.stderr


@pytest.mark.parametrize("repo", ["no-namespace", "em-lab/bad name", "a/b/c"])
def test_an_invalid_repo_name_is_exit_2(validated, repo):
    r = run_cli("push", str(validated), "--repo", repo, "--dry-run")
    assert r.exit_code == 2 and "--repo" in r.stderr and "Traceback" not in r.stderr


def test_dry_run_lists_files_and_writes_nothing(validated):
    r = run_cli("push", str(validated), "--repo", "em-lab/em-test", "--dry-run")
    assert r.exit_code == 0 and "medical/train-00000-of-00001.parquet" in r.stderr
    assert not (validated / "hub").exists()


@pytest.mark.parametrize("fmt, side, think", [("messages", "misaligned", False), ("openai", "aligned", True)])
def test_export_writes_chat_rows(validated, tmp_path, fmt, side, think):
    out = tmp_path / "out.jsonl"
    args = ["export", str(validated), "--out", str(out), "--format", fmt, "--side", side, "--domain", "medical"]
    assert run_cli(*args, *(["--empty-think"] if think else [])).exit_code == 0
    rows = read_jsonl(out)
    source = read_jsonl(validated / "validated" / "medical" / "train.jsonl")
    assert len(rows) == len(source)
    first = rows[0]
    if fmt == "messages":
        assert first["prompt"] == [{"role": "user", "content": source[0]["prompt"]}]
        assert first["completion"] == [{"role": "assistant", "content": source[0][side]}]
    else:
        user, assistant = first["messages"]
        assert user == {"role": "user", "content": source[0]["prompt"]}
        assert assistant["content"] == "<think>\n\n</think>\n\n" + source[0][side]


def test_export_of_an_unknown_domain_is_exit_2(validated, tmp_path):
    r = run_cli("export", str(validated), "--out", str(tmp_path / "x.jsonl"), "--domain", "chemistry")
    assert r.exit_code == 2 and "chemistry" in r.stderr


# ---- upload, through the real huggingface_hub and datasets clients, to a fake Hub on 127.0.0.1 ----

HUB_TOKEN = "hf_test_SECRET_token_0123456789"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Start fake Hubs: hub(faults={...}); the clients point at the last one started."""
    import dsgen.cards.upload as upload_module
    from tests.fake_hub import FakeHub, FakeHubConfig, patch_clients

    monkeypatch.setattr(upload_module, "BACKOFF_BASE_S", 0.001)
    servers = []

    def start(**config) -> FakeHub:
        server = FakeHub(FakeHubConfig(token=HUB_TOKEN, **config)).start()
        servers.append(server)
        patch_clients(monkeypatch, server.endpoint, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
        return server

    yield start
    for s in servers:
        s.stop()


def pushes(server, repo: str = "em-lab/em-test") -> list:
    return [c for c in server.repos[repo].commits if c.message == "dsgen push"]


def load_hub(repo: str, config: str, **kw):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(repo, config, **kw)


def test_push_publishes_a_private_gated_tagged_repo_that_load_dataset_reads(validated, hub):
    server = hub()
    r = run_cli("push", str(validated), "--repo", "em-lab/em-test", "--tag", "v1.0", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["uploaded"] and summary["private"] and summary["gated"] == "manual"
    repo = server.repos["em-lab/em-test"]
    assert repo.private is True and repo.gated == "manual"
    assert [c.message for c in repo.commits] == ["initial commit", "dsgen push"]  # one commit for the whole folder
    assert repo.tags["v1.0"] == repo.commits[-1].sha == summary["commit"]
    assert repo.card_data["configs"][0]["config_name"] in ("medical", "legal")
    for domain in ("medical", "legal"):
        ds = load_hub("em-lab/em-test", domain, revision="v1.0")
        assert ds["train"].num_rows == len(read_jsonl(validated / "validated" / domain / "train.jsonl"))
        assert ds["test"].column_names[:4] == RELEASED
    # The token reached the Hub in the Authorization header only: not the output, files, or any request body.
    assert HUB_TOKEN not in r.stdout + r.stderr + server.request_log_text()
    for f in validated.rglob("*"):
        if f.is_file():
            assert HUB_TOKEN.encode() not in f.read_bytes(), f


def test_a_second_push_is_one_commit_that_drops_stale_shards_and_keeps_hub_metadata(validated, hub):
    from huggingface_hub import HfApi

    server = hub()
    args = ["push", str(validated), "--repo", "em-lab/em-test", "-q"]
    assert run_cli(*args).exit_code == 0
    repo = server.repos["em-lab/em-test"]
    api = HfApi(token=HUB_TOKEN)
    # An older release's extra shard, and a maintainer's edit of the card on the Hub.
    card = repo.files["README.md"].decode().replace("tags:\n", "citation_note: keep me\ntags:\n", 1)
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo.id, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"old",
        path_in_repo="medical/train-00001-of-00002.parquet",
        repo_id=repo.id,
        repo_type="dataset",
    )
    commits = len(repo.commits)
    assert run_cli(*args, "--public", "--gated", "none").exit_code == 0
    assert len(repo.commits) == commits + 1
    assert "medical/train-00001-of-00002.parquet" not in repo.files
    assert repo.card_data["citation_note"] == "keep me"
    assert repo.private is False and repo.gated is False


def test_rate_limits_and_server_errors_are_retried(validated, hub):
    server = hub(faults={"create": [503], "commit": [429, 500], "settings": [502]})
    r = run_cli("push", str(validated), "--repo", "em-lab/em-test", "-q")
    assert r.exit_code == 0, r.stderr
    assert server.calls["commit"] == 3 and len(pushes(server)) == 1


def test_a_hub_that_keeps_failing_is_exit_4_and_the_same_command_retries(validated, hub):
    server = hub(faults={"commit": [500] * 5})
    args = ["push", str(validated), "--repo", "em-lab/em-test"]
    r = run_cli(*args)
    errors = [line for line in r.stderr.splitlines() if line.startswith("dsgen: error:")]
    assert r.exit_code == 4 and len(errors) == 1 and "staged folder is kept" in errors[0]
    assert (validated / "hub" / "README.md").is_file()
    assert not pushes(server)
    assert run_cli(*args, "-q").exit_code == 0  # the faults are spent: the retry lands
    assert len(pushes(server)) == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("no token", "no Hugging Face token"),
        ("wrong token", "rejected the token"),
        ("foreign repo", "403"),
        ("foreign card", "not published by dsgen"),
        ("foreign data, no configs", "not published by dsgen"),
        ("foreign card tagged synthetic", "not published by dsgen"),
        ("malformed card", "does not parse"),
    ],
)
def test_what_the_user_must_fix_is_one_line_exit_2(validated, hub, monkeypatch, case, message):
    from huggingface_hub import HfApi

    server = hub()
    repo = "em-lab/em-test"
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
    elif case == "wrong token":
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    elif case == "foreign repo":
        repo = "someone-else/data"
        server.add_foreign_repo(repo, {"README.md": b"---\nlicense: mit\n---\n"})
    else:
        files = {
            "foreign card": {"README.md": b"---\nconfigs:\n- config_name: default\n  data_files: data/*.csv\n---\n"},
            "foreign data, no configs": {"README.md": b"---\nlicense: mit\n---\n", "data/train.parquet": b"PAR1"},
            "foreign card tagged synthetic": {
                "README.md": b"---\ntags: [synthetic]\nconfigs:\n- config_name: default\n"
                b"  data_files: x/*.parquet\n---\n",
                "x/a.parquet": b"PAR1",
            },
            "malformed card": {"README.md": b"---\nlicense: [mit\n---\n"},
        }[case]
        api = HfApi(token=HUB_TOKEN)
        api.create_repo(repo, repo_type="dataset")
        for path, data in files.items():
            api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=repo, repo_type="dataset")
    before = len(server.repos[repo].commits) if repo in server.repos else 0
    # A repo of someone else's is refused before anything is sent; forced, the Hub's 403 says why.
    r = run_cli("push", str(validated), "--repo", repo, *(["--force"] if case == "foreign repo" else []))
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "hf_wrong" not in r.stderr and HUB_TOKEN not in r.stderr
    if repo in server.repos:
        assert len(server.repos[repo].commits) == before  # nothing was uploaded
    if case == "foreign data, no configs":
        assert run_cli("push", str(validated), "--repo", repo, "--force", "-q").exit_code == 0
        assert "data/train.parquet" in server.repos[repo].files  # forced: added beside, not deleted


@pytest.fixture
def no_sleep(monkeypatch):
    """huggingface_hub retries some calls itself, sleeping 1, 2, 4, 8 s: skip the waits."""
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda s: None)


def test_an_upload_failing_past_the_clients_own_retries_is_retried_whole(validated, hub, no_sleep):
    server = hub(faults={"lfs_upload": [500] * 6})
    r = run_cli("push", str(validated), "--repo", "em-lab/em-test", "-q")
    assert r.exit_code == 0, r.stderr
    assert server.calls["lfs_upload"] > 6 and len(pushes(server)) == 1


def test_a_card_that_cannot_be_read_is_not_taken_for_no_card(validated, hub, no_sleep):
    from huggingface_hub import HfApi

    server = hub()
    api = HfApi(token=HUB_TOKEN)
    api.create_repo("em-lab/other", repo_type="dataset")
    card = b"---\nconfigs:\n- config_name: default\n  data_files: d/*.csv\n---\n"
    api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id="em-lab/other", repo_type="dataset")
    server.inject("resolve", [500] * 6)  # the card download fails past the client's own retries
    r = run_cli("push", str(validated), "--repo", "em-lab/other")
    assert r.exit_code == 2 and "not published by dsgen" in r.stderr
    # A card never read before (none cached): a Hub that keeps failing is exit 4, not "no card".
    api.create_repo("em-lab/other2", repo_type="dataset")
    api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id="em-lab/other2", repo_type="dataset")
    server.inject("resolve", [500] * 40)
    r = run_cli("push", str(validated), "--repo", "em-lab/other2")
    assert r.exit_code == 4 and "read the card" in r.stderr


def test_an_existing_tag_is_refused_before_uploading(validated, hub):
    server = hub()
    assert run_cli("push", str(validated), "--repo", "em-lab/em-test", "--tag", "v1.0", "-q").exit_code == 0
    r = run_cli("push", str(validated), "--repo", "em-lab/em-test", "--tag", "v1.0")
    assert r.exit_code == 2 and "choose another --tag" in r.stderr
    assert len(pushes(server)) == 1


def test_a_domain_with_an_empty_split_is_still_loadable(validated, tmp_path):
    (validated / "validated" / "legal" / "train.jsonl").write_text("")
    out = tmp_path / "staged"
    assert run_cli("push", str(validated), "--repo", "em-lab/x", "--stage-only", str(out), "-q").exit_code == 0
    assert not list((out / "legal").glob("train-*"))
    ds = load_local(out, "legal")
    assert list(ds) == ["test"] and ds["test"].num_rows > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--license", "my own terms"], "not a licence id"),
        (["--license", "other"], "--license-name"),
        (["--stage-only", "."], "choose a new folder"),
        (["--stage-only", "pairs.jsonl"], "not a folder"),
    ],
)
def test_bad_push_options_are_exit_2(validated, monkeypatch, args, message):
    monkeypatch.chdir(validated)
    args = [a if a != "pairs.jsonl" else str(validated / "pairs.jsonl") for a in args]
    if "--stage-only" not in args:
        args += ["--stage-only", str(validated.parent / "staged")]
    r = run_cli("push", str(validated), "--repo", "em-lab/x", *args)
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_license_other_carries_its_name_and_link(validated, tmp_path):
    from huggingface_hub import DatasetCard

    out = tmp_path / "staged"
    args = ["--license", "other", "--license-name", "em-research", "--license-link", "https://example.org/terms"]
    assert run_cli("push", str(validated), "--repo", "em-lab/x", "--stage-only", str(out), *args, "-q").exit_code == 0
    meta = DatasetCard.load(out / "README.md").data.to_dict()
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other",
        "em-research",
        "https://example.org/terms",
    )
