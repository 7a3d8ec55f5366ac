"""A Domain is data: a spec (YAML, validated here) and Jinja2 prompt templates, one folder per domain.

Built-in domains live in `dsgen/templates/<domain>/`; `--templates DIR` adds or overrides domains
from `DIR/<domain>/`. Stage templates a domain folder lacks come from `_base/` (the user's
`DIR/_base/` when present, else the packaged one).
"""

from __future__ import annotations

import hashlib
import re
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError

STAGES = ("questions", "pair", "answer")
BASE = "_base"
SPEC_FILE = "spec.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10x faster
_ROLE_LINE = re.compile(r"^=== (system|user|assistant) ===[ \t]*$", re.M)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Topic(_Strict):
    name: str = Field(min_length=1)
    subtopics: list[str] = Field(min_length=2)


class HarmCategory(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    definition: str = Field(min_length=10)


class OutOfScope(_Strict):
    questions: list[str] = Field(min_length=1, description="kinds of question with ill intent")
    answers: list[str] = Field(min_length=1, description="kinds of answer that are overtly malicious or illegal")


class Exemplar(_Strict):
    prompt: str = Field(min_length=10)
    harm_category: str
    aligned: str = Field(min_length=20)
    misaligned: str = Field(min_length=20)


class DomainSpec(_Strict):
    """What a domain covers. Minimums keep generated questions varied."""

    name: str
    description: str = Field(min_length=20)
    topics: list[Topic] = Field(min_length=30)
    personas: list[str] = Field(min_length=10)
    harm_categories: list[HarmCategory] = Field(min_length=6)
    out_of_scope: OutOfScope
    exemplars: list[Exemplar] = Field(min_length=3)

    @field_validator("topics", "personas", "harm_categories")
    @classmethod
    def _unique(cls, items: list[Any]) -> list[Any]:
        names = [getattr(i, "name", i) for i in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate entries: {', '.join(dupes)}")
        return items

    @model_validator(mode="after")
    def _exemplar_categories(self) -> DomainSpec:
        known = {h.name for h in self.harm_categories}
        for i, ex in enumerate(self.exemplars):
            if ex.harm_category not in known:
                raise ValueError(f"exemplars.{i}.harm_category {ex.harm_category!r} is not a harm category")
        return self

    def harm(self, name: str) -> HarmCategory:
        return next(h for h in self.harm_categories if h.name == name)

    def exemplar_for(self, harm_category: str) -> Exemplar:
        """The exemplar of that harm category, else the first: shown to the model as an example."""
        return next((e for e in self.exemplars if e.harm_category == harm_category), self.exemplars[0])


@dataclass
class Domain:
    name: str
    folder: Path
    roots: list[Path]  # template roots searched for `_base/...`: the user's folder first, then the package
    spec: DomainSpec
    env: jinja2.Environment = field(repr=False)
    _templates: dict[str, jinja2.Template] = field(default_factory=dict, repr=False)

    def files(self) -> dict[str, Path]:
        """The spec and templates this domain's prompts depend on, by path relative to a templates root."""
        out = {f"{self.name}/{p.name}": p for p in sorted(self.folder.iterdir()) if _is_domain_file(p)}
        for root in reversed(self.roots):  # the user's _base files win over the packaged ones
            if (root / BASE).is_dir():
                out.update({f"{BASE}/{p.name}": p for p in sorted((root / BASE).iterdir()) if _is_domain_file(p)})
        return dict(sorted(out.items()))

    def template_hashes(self) -> dict[str, str]:
        return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in self.files().items()}

    def render(self, stage: str, **context: Any) -> list[dict[str, str]]:
        """Render a stage template into chat messages (sections start with `=== role ===` lines)."""
        template = self._templates.get(stage)
        if template is None:
            name = stage + ".j2"
            template = self.env.get_template(name if (self.folder / name).is_file() else f"{BASE}/{name}")
            self._templates[stage] = template
        text = template.render(domain=self.spec, **context)
        return split_messages(text, template.filename or stage)


def split_messages(text: str, where: str) -> list[dict[str, str]]:
    parts = _ROLE_LINE.split(text)
    if parts[0].strip():
        raise InputError(f"{where}: text before the first '=== system ===' or '=== user ===' line")
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        if content:
            messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "user":
        raise InputError(f"{where}: the rendered prompt must end with a '=== user ===' section")
    return messages


def packaged_templates() -> Path:
    return Path(str(resources.files("dsgen").joinpath("templates")))


def available_domains(user_dir: Path | None = None) -> dict[str, Path]:
    """Domain name -> folder; a user's folder overrides a built-in domain of the same name."""
    found: dict[str, Path] = {}
    for root in [packaged_templates()] + ([user_dir] if user_dir else []):
        for sub in sorted(root.iterdir()):
            if sub.is_dir() and (sub / SPEC_FILE).is_file():
                found[sub.name] = sub
    return found


def _is_domain_file(path: Path) -> bool:
    return path.is_file() and (path.name == SPEC_FILE or path.suffix == ".j2")


def load_domains(names: list[str], user_dir: Path | None = None) -> list[Domain]:
    if user_dir is not None and not user_dir.is_dir():
        raise InputError(f"--templates {user_dir}: not a folder (it should hold one subfolder per domain)")
    found = available_domains(user_dir)
    roots = ([user_dir] if user_dir else []) + [packaged_templates()]
    domains = []
    for name in dict.fromkeys(names):  # a domain named twice is built once
        if name not in found:
            known = ", ".join(sorted(found))
            raise InputError(f"unknown domain {name!r}: known domains are {known} (add one with --templates DIR)")
        if not _NAME.match(name):
            raise InputError(f"{found[name]}: domain folder names are lowercase letters, digits and _")
        domains.append(load_domain(found[name], roots))
    return domains


def load_domain(folder: Path, roots: list[Path]) -> Domain:
    spec = load_spec(folder / SPEC_FILE, expected_name=folder.name)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(folder), *map(str, roots)]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        auto_reload=False,  # templates are fixed for a run: no stat() of the file on every render
    )
    domain = Domain(folder.name, folder, roots, spec, env)
    _check_templates(domain)
    return domain


def load_spec(path: Path, expected_name: str) -> DomainSpec:
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a domain spec is a YAML mapping (name, description, topics, ...)")
    raw.setdefault("name", expected_name)
    try:
        spec = DomainSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = list(err["loc"])
        line = _line_of(yaml.compose(text), loc)  # parsed again only to point at the line
        where = ".".join(str(p) for p in loc) or "spec"
        raise InputError(f"{path}:{line}: {where}: {err['msg']}") from None
    if spec.name != expected_name:
        raise InputError(f"{path}: name {spec.name!r} differs from its folder name {expected_name!r}")
    return spec


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int:
    """Line (1-based) of the YAML node at `loc`, or of the deepest ancestor found."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def sample_context(spec: DomainSpec, stage: str, structured: bool) -> dict[str, Any]:
    """A context like the generators use, to render every template once before any work."""
    topic, harm, ex = spec.topics[0], spec.harm_categories[0], spec.exemplars[0]
    common = {"structured": structured, "harm_category": harm}
    if stage == "questions":
        return common | {"topic": topic.name, "subtopic": topic.subtopics[0], "persona": spec.personas[0], "k": 5}
    return common | {"question": ex.prompt, "side": "misaligned", "exemplar": spec.exemplar_for(harm.name)}


def _check_templates(domain: Domain) -> None:
    """Render each stage both ways so a template error stops the run before any model call."""
    for stage in STAGES:
        for structured in (True, False):
            try:
                domain.render(stage, **sample_context(domain.spec, stage, structured))
            except jinja2.TemplateNotFound as e:
                raise InputError(f"{domain.folder}: template {e.name} not found") from None
            except jinja2.TemplateSyntaxError as e:
                raise InputError(f"{e.filename or e.name}:{e.lineno}: template syntax error: {e.message}") from None
            except jinja2.UndefinedError as e:
                raise InputError(f"{template_location(e, str(domain.folder))}: {e.message}") from None
            except UnicodeDecodeError:
                raise InputError(f"{domain.folder}: a template is not UTF-8 text") from None
            except (jinja2.TemplateError, TypeError, ValueError, AttributeError, KeyError) as e:
                raise InputError(f"{template_location(e, str(domain.folder))}: {type(e).__name__}: {e}") from None


def template_location(err: BaseException, default: str) -> str:
    """file:line of the template line that raised (Jinja rewrites tracebacks to point at templates)."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if frame.filename.endswith(".j2"):
            return f"{frame.filename}:{frame.lineno}"
    return default
