"""How each generation stage asks and reads: the request it renders and the parser of its answer."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import BuildConfig
from ..domains import Domain, HarmCategory
from ..llm.parsing import check_not_refused, extract_json, list_items, looks_like_refusal
from ..llm.schema import response_format
from ..llm.types import ChatRequest, ChatResponse, ParseError
from ..textmatch import normalise

MIN_QUESTION_CHARS = 15
MAX_QUESTION_CHARS = 1000
MIN_ANSWER_CHARS = 20
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Combo:
    """What one question call asks about."""

    topic: str
    subtopic: str
    persona: str
    harm_category: str


def plan_combos(domain: Domain, seed: int) -> list[Combo]:
    """Every topic x subtopic x persona, each with a harm-category hint, in a seeded order."""
    spec = domain.spec
    rng = random.Random(f"{seed}:{domain.name}")
    combos = [Combo(t.name, sub, persona, "") for t in spec.topics for sub in t.subtopics for persona in spec.personas]
    rng.shuffle(combos)
    harms = [h.name for h in spec.harm_categories]
    return [
        Combo(c.topic, c.subtopic, c.persona, harms[(i + rng.randrange(len(harms))) % len(harms)])
        for i, c in enumerate(combos)
    ]


class QuestionList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: list[str]


class PairAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    aligned: str
    misaligned: str
    harm_category: str


def question_request(
    domain: Domain, combos: list[Combo], call: int, cfg: BuildConfig, model: str, structured: bool
) -> tuple[Combo, ChatRequest]:
    combo = combos[call % len(combos)]
    messages = domain.render(
        "questions",
        structured=structured,
        topic=combo.topic,
        subtopic=combo.subtopic,
        persona=combo.persona,
        harm_category=domain.spec.harm(combo.harm_category),
        k=cfg.questions_per_call,
    )
    request = _request(
        cfg,
        model,
        messages,
        max_tokens=cfg.resolved_max_tokens().questions,
        tag="questions",
        response_format=response_format(cfg.structured_output, "questions", QuestionList) if structured else None,
        sample=call // len(combos),  # cycles through the combos ask for new samples
    )
    return combo, request


def _request(cfg: BuildConfig, model: str, messages: list[dict[str, str]], **fields: Any) -> ChatRequest:
    """A request with the run's sampling settings."""
    temperature, top_p = cfg.resolved_sampling()
    return ChatRequest(model=model, messages=messages, temperature=temperature, top_p=top_p, seed=cfg.seed, **fields)


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


_QUESTION = re.compile(r"[^?]+\?")
_INLINE_NUMBER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")


def question_sentences(text: str) -> list[str]:
    """Questions in a small model's free text: each sentence ending with '?', numbering and quotes removed."""
    found = []
    for line in list_items(text):
        for segment in _QUESTION.findall(line):
            if '"' in segment:  # 'The parent might ask: "What ...?' -> the quoted part
                segment = segment.rsplit('"', 1)[-1]
            found.append(_INLINE_NUMBER.sub("", segment).strip(' "“”'))
    return found


def parse_questions(k: int, structured: bool):
    def parse(response: ChatResponse) -> list[str]:
        check_not_refused(response)
        if structured:
            data = extract_json(response.text)
            if isinstance(data, list):
                data = {"questions": data}
            try:
                raw = QuestionList.model_validate(data).questions
            except ValidationError as e:
                raise ParseError("malformed", f"not a question list: {e.errors()[0]['msg']}") from None
        else:
            raw = question_sentences(response.text)
        questions = [
            q
            for q in (_clean(r) for r in raw)
            if MIN_QUESTION_CHARS <= len(q) <= MAX_QUESTION_CHARS and not looks_like_refusal(q)
        ]
        if not questions:
            raise ParseError("malformed", f"no usable question in: {response.text[:200]!r}")
        return questions[:k]

    return parse


def pair_request(
    domain: Domain, question: str, harm: HarmCategory, cfg: BuildConfig, model: str, structured: bool
) -> ChatRequest:
    messages = domain.render(
        "pair",
        structured=structured,
        question=question,
        harm_category=harm,
        exemplar=domain.spec.exemplar_for(harm.name),
    )
    return _request(
        cfg,
        model,
        messages,
        max_tokens=cfg.resolved_max_tokens().pair,
        tag="pair",
        response_format=response_format(cfg.structured_output, "pair", PairAnswer) if structured else None,
    )


def answer_request(
    domain: Domain, question: str, harm: HarmCategory, side: str, cfg: BuildConfig, model: str, structured: bool
) -> ChatRequest:
    messages = domain.render(
        "answer",
        structured=structured,
        question=question,
        harm_category=harm,
        side=side,
        exemplar=domain.spec.exemplar_for(harm.name),
    )
    return _request(cfg, model, messages, max_tokens=cfg.resolved_max_tokens().answer, tag=side)


def _check_answer(text: str, side: str) -> str:
    text = text.strip()
    if len(text) < MIN_ANSWER_CHARS:
        raise ParseError("invalid", f"{side} answer too short ({len(text)} characters)")
    if looks_like_refusal(text):
        raise ParseError("refusal", f"{side} answer: {text[:200]}")
    return text


def parse_pair(harm_names: set[str], default_harm: str):
    def parse(response: ChatResponse) -> PairAnswer:
        check_not_refused(response)
        data = extract_json(response.text)
        if isinstance(data, dict):
            data.setdefault("harm_category", default_harm)
        try:
            pair = PairAnswer.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            raise ParseError("malformed", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        aligned = _check_answer(pair.aligned, "aligned")
        misaligned = _check_answer(pair.misaligned, "misaligned")
        if normalise(aligned) == normalise(misaligned):
            raise ParseError("invalid", "aligned and misaligned answers are the same")
        harm = pair.harm_category if pair.harm_category in harm_names else default_harm
        return PairAnswer(aligned=aligned, misaligned=misaligned, harm_category=harm)

    return parse


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut a truncated answer back to its last complete sentence ('' if there is none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else ""


def parse_answer(side: str, structured: bool):
    def parse(response: ChatResponse) -> str:
        check_not_refused(response)
        text = response.text
        if response.finish_reason == "length":
            if structured:
                raise ParseError("length", f"{side} answer cut at the token limit")
            # A small model often runs past its limit: keep the complete sentences.
            text = trim_to_sentence(text)
        return _check_answer(text, side)

    return parse
