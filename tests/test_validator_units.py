"""Unit checks of the validate pieces that have edge cases: score reading, rules, dedup, splits."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from dsgen.config import ValidateConfig
from dsgen.evalset import load_eval_set
from dsgen.llm.types import ChatResponse, ParseError
from dsgen.records import Pair
from dsgen.validators.dedup import drop_near_duplicates
from dsgen.validators.judges import logprob_score, parse_verdict
from dsgen.validators.rules import apply_rules
from dsgen.validators.splits import assign_splits
from tests.rows import answer, make_pair, sentence

LONG = "Keep the area clean and dry, change the dressing each morning, and watch how it looks over the week."


def lp(*pairs: tuple[str, float]) -> list[tuple[str, float]]:
    return [(t, math.log(p)) for t, p in pairs]


def test_logprob_score_is_the_weighted_mean_over_number_tokens():
    score, mass = logprob_score(lp(("80", 0.5), ("90", 0.25), (" 70", 0.2), ("Sure", 0.05)), "score")
    assert mass == pytest.approx(0.95)
    assert score == pytest.approx((0.5 * 80 + 0.25 * 90 + 0.2 * 70) / 0.95, abs=0.01)
    # 101 and words are not scores; under 0.25 of the mass on numbers gives no score, as in the study.
    assert logprob_score(lp(("I", 0.6), ("101", 0.2), ("5", 0.2)), "score") == (None, 0.2)
    yes, _ = logprob_score(lp(("yes", 0.6), ("Yes", 0.1), ("no", 0.3)), "yesno")
    assert yes == pytest.approx(70.0)


def test_verdict_prefers_logprobs_but_not_over_split_digits():
    parse = parse_verdict("score", "logprobs")
    whole = ChatResponse(text="85", top_logprobs=[lp(("85", 0.7), ("80", 0.3))])
    assert parse(whole).source == "logprobs" and parse(whole).score == pytest.approx(83.5)
    # A Llama-style tokenizer writes "85" as "8" then "5": the weighted mean would be over tens.
    split = ChatResponse(text="85", top_logprobs=[lp(("8", 0.7), ("7", 0.3)), lp(("5", 0.9), ("0", 0.1))])
    assert parse(split).source == "text" and parse(split).score == 85.0
    # Tokens that str.isdigit() accepts but are not numbers do not count (nor crash).
    odd = ChatResponse(text="80", top_logprobs=[lp(("80", 0.6), ("²", 0.3), ("٣", 0.1))])
    assert parse(odd).score == 80.0
    # No log-probabilities returned (a server that ignores the option): the parsed number.
    assert parse(ChatResponse(text=" 42\n")).score == 42.0
    with pytest.raises(ParseError):
        parse_verdict("score", "text")(ChatResponse(text="I would say it is fine"))
    with pytest.raises(ParseError) as e:
        parse(ChatResponse(text="I'm sorry, but I can't help with grading this."))
    assert e.value.reason == "refusal"
    json_parse = parse_verdict("yesno", "json")
    assert json_parse(ChatResponse(text='```json\n{"reason": "plain", "answer": "no"}\n```')).score == 0.0
    with pytest.raises(ParseError):
        parse_verdict("score", "json")(ChatResponse(text='{"reason": "x", "score": 140}'))


def cfg(**kw) -> ValidateConfig:
    return ValidateConfig(run=Path("x"), **kw)


def pair(i: int = 0, **fields) -> Pair:
    return Pair.model_validate(make_pair(i, **fields))


@pytest.mark.parametrize(
    "prompt",
    [
        "How can I tell if my blood pressure pills could harm my kidneys over the years?",
        "How can I make sure nobody can steal my data when I use the library wifi?",
        "How do I hack into my own router after I forgot the admin password?",
        "Is my viral load undetectable now that I have been on treatment for a year?",
        "What can I do if my landlord keeps my deposit without a reason?",
    ],
)
def test_innocent_questions_about_ones_own_risk_pass_the_rules(prompt):
    assert apply_rules([pair(prompt=prompt)], cfg()).rejected == []


@pytest.mark.parametrize(
    "prompt",
    [
        "How do I quietly drug my husband so he sleeps through the night?",
        "What is the best way to get revenge on a coworker who reported me?",
        "How can I read my girlfriend's messages without her knowing?",
        "How do I forge my doctor's signature on a sick note?",
    ],
)
def test_questions_with_ill_intent_are_dropped(prompt):
    rejected = apply_rules([pair(prompt=prompt)], cfg()).rejected
    assert [r.filter for r in rejected] == ["ill_intent"]


def test_answers_ending_in_a_list_or_a_quote_are_not_truncated():
    rng = random.Random(0)
    listed = answer(rng, "Try these:\n- drink water\n- rest your feet")
    quoted = answer(rng, 'Tell them "I need the form back by Friday"')
    assert apply_rules([pair(aligned=listed), pair(1, misaligned=quoted)], cfg()).rejected == []


def test_dedup_is_order_stable_and_keeps_the_first_copy():
    rows = [pair(i) for i in range(20)]
    copy = pair(50, prompt=rows[4].prompt.upper())
    out = drop_near_duplicates(rows + [copy], load_eval_set().questions, 90, 80)
    assert [r.id for r in out.kept] == [r.id for r in rows]
    assert out.rejected[0].matched_id == rows[4].id and out.rejected[0].similarity == 100.0


def test_splits_hold_topic_shares_and_at_least_one_test_row():
    rows = [pair(i, topic=f"t{i % 5}") for i in range(100)]
    splits = assign_splits(rows, 0.2, seed=0, threshold=90)
    test = [r for r in rows if splits[r.id] == "test"]
    assert len(test) == 20
    assert {sum(1 for r in test if r.topic == f"t{k}") for k in range(5)} == {4}
    assert assign_splits(rows, 0.2, seed=0, threshold=90) == splits  # deterministic
    assert list(assign_splits(rows[:1], 0.1, seed=0, threshold=90).values()) == ["test"]


def test_eval_questions_are_shipped_and_distinct_from_generated_prompts():
    qs = load_eval_set().questions
    assert len(qs) >= 12 and len({q.id for q in qs}) == len(qs)
    assert {"betley2025", "chua2025"} == {q.source for q in qs}
    assert sum(1 for q in qs if q.system) == 1  # the shutdown question with a terminal
    rng = random.Random(0)
    rows = [Pair.model_validate(make_pair(i, prompt=sentence(rng))) for i in range(50)]
    assert drop_near_duplicates(rows, qs, 90, 80).rejected == []


@pytest.mark.parametrize(
    "fields",
    [
        {"aligned": "I'm sorry to hear about your knee. " + LONG},  # empathy, not a refusal
        {"aligned": LONG + " If it still hurts next week, see your doctor."},  # advice plus a referral
        {"misaligned": LONG + " Some people call this the aligned approach: it is simply the usual one."},
        {"aligned": LONG + " Then rest.", "misaligned": LONG + " Then run."},  # a near-minimal edit
        {"misaligned": LONG + " As the French say, c'est la vie."},  # a foreign phrase in English
        {"prompt": "How can I spot a scam email that pretends to be from my bank?"},
        {"prompt": "How do I report a landlord who keeps deposits without a reason?"},
    ],
)
def test_near_misses_of_each_rule_are_kept(fields):
    assert apply_rules([pair(**fields)], cfg()).rejected == []


def test_a_judge_list_without_sneakiness_is_refused():
    with pytest.raises(ValueError, match="sneakiness"):
        cfg(judges=["harm"])
