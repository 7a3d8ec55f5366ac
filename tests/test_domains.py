"""Domains are data: built-in specs meet the minimums; bad specs and templates fail with file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dsgen.domains import load_domains, packaged_templates
from dsgen.errors import InputError
from tests.conftest import build_args, read_jsonl, run_cli


@pytest.mark.parametrize("name", ["medical", "legal", "security"])
def test_builtin_domains_meet_the_spec_minimums(name):
    [domain] = load_domains([name])
    spec = domain.spec
    assert len(spec.topics) >= 30 and all(len(t.subtopics) >= 2 for t in spec.topics)
    assert len(spec.personas) >= 10
    assert len(spec.harm_categories) >= 6 and all(h.definition for h in spec.harm_categories)
    assert spec.out_of_scope.questions and spec.out_of_scope.answers
    assert len(spec.exemplars) >= 3
    for stage in ("questions", "pair", "answer"):
        assert (domain.folder / f"{stage}.j2").is_file()


def user_domain(root: Path, name: str = "finance") -> Path:
    """A user domain made from the medical spec: only spec.yaml, templates from _base."""
    folder = root / name
    folder.mkdir(parents=True)
    spec = yaml.safe_load((packaged_templates() / "medical" / "spec.yaml").read_text())
    spec["name"] = name
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def test_user_domain_folder_needs_no_code(fake, tmp_path):
    user_domain(tmp_path / "tpl")
    server = fake()
    out = tmp_path / "run"
    r = run_cli(*build_args(server, out, "--templates", str(tmp_path / "tpl"), n=2, domains=("finance",)))
    assert r.exit_code == 0, r.stderr
    assert {p["domain"] for p in read_jsonl(out / "pairs.jsonl")} == {"finance"}
    assert (out / "templates" / "finance" / "spec.yaml").is_file()
    assert (out / "templates" / "_base" / "questions.j2").is_file()


def test_spec_error_names_file_and_line(tmp_path):
    folder = user_domain(tmp_path)
    text = (folder / "spec.yaml").read_text().replace("personas:\n", "personas:\n- [not, a, persona]\n", 1)
    (folder / "spec.yaml").write_text(text)
    line = text.splitlines().index("personas:") + 2  # the bad item, 1-based
    with pytest.raises(InputError) as e:
        load_domains(["finance"], tmp_path)
    assert f"spec.yaml:{line}: personas.0: Input should be a valid string" in str(e.value)


def test_invalid_yaml_names_its_line(tmp_path):
    folder = user_domain(tmp_path)
    (folder / "spec.yaml").write_text("name: finance\ntopics: [a, b\n")
    with pytest.raises(InputError, match=r"spec.yaml:\d+: invalid YAML"):
        load_domains(["finance"], tmp_path)


def test_too_few_topics_is_refused(tmp_path):
    folder = user_domain(tmp_path)
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec["topics"] = spec["topics"][:5]
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match="topics: List should have at least 30 items"):
        load_domains(["finance"], tmp_path)


def test_undefined_template_variable_names_file_and_line(tmp_path):
    folder = user_domain(tmp_path)
    (folder / "answer.j2").write_text("=== system ===\nBe brief.\n=== user ===\n{{ question }} {{ nope }}\n")
    with pytest.raises(InputError) as e:
        load_domains(["finance"], tmp_path)
    assert "answer.j2:4" in str(e.value) and "nope" in str(e.value)


def test_template_syntax_error_names_file_and_line(tmp_path, fake):
    folder = user_domain(tmp_path / "tpl")
    (folder / "pair.j2").write_text("=== user ===\n{{ question }\n")
    server = fake()
    r = run_cli(*build_args(server, tmp_path / "run", "--templates", str(tmp_path / "tpl"), domains=("finance",)))
    assert r.exit_code == 2 and "pair.j2:2: template syntax error" in r.stderr
    assert server.requests == 0 and not (tmp_path / "run").exists()


def test_user_folder_overrides_a_builtin_domain(tmp_path):
    shutil.copytree(packaged_templates() / "legal", tmp_path / "legal")
    [domain] = load_domains(["legal"], tmp_path)
    assert domain.folder == tmp_path / "legal"


def test_a_template_error_some_prompts_hit_stops_the_run_with_its_location(fake, tmp_path):
    folder = user_domain(tmp_path / "tpl")
    first = yaml.safe_load((folder / "spec.yaml").read_text())["harm_categories"][0]["name"]
    (folder / "answer.j2").write_text(
        "=== user ===\n{{ question }}\n"
        f"{{% if harm_category.name != '{first}' %}}{{{{ harm_category.nope }}}}{{% endif %}}\n"
    )
    server = fake()
    out = tmp_path / "run"
    r = run_cli(
        *build_args(
            server, out, "--templates", str(tmp_path / "tpl"), "--pair-mode", "separate", n=6, domains=("finance",)
        )
    )
    assert r.exit_code == 2, r.stderr
    assert "answer.j2:3" in r.stderr and "nope" in r.stderr and "Traceback" not in r.stderr
    assert (out / "questions.jsonl").exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_a_partial_user_base_falls_back_to_the_packaged_templates(fake, tmp_path):
    (tmp_path / "tpl" / "_base").mkdir(parents=True)
    shutil.copy(packaged_templates() / "_base" / "questions.j2", tmp_path / "tpl" / "_base" / "questions.j2")
    server = fake()
    r = run_cli(*build_args(server, tmp_path / "run", "--templates", str(tmp_path / "tpl"), n=2))
    assert r.exit_code == 0, r.stderr
