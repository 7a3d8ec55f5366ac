"""`dsgen build`: questions, then answer pairs, per domain, written to the run directory.

Scheduling is deterministic given the cache: question calls are made in waves, their results
are taken in call order (duplicates are decided in that order), and each accepted question gets a
pair call while `pairs made + pairs in flight < n`. A failed pair frees a place for the next
question, so the pairs kept are always those of the first questions, in order, that got one.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jinja2
from tqdm import tqdm

from ..config import BuildConfig
from ..domains import Domain, template_location
from ..errors import DsgenError, InputError, ResultFailed
from ..llm.client import LLMClient, Outcome
from ..records import Failure, Pair, Question, content_id
from ..textmatch import NearDuplicateIndex
from .requests import (
    Combo,
    answer_request,
    pair_request,
    parse_answer,
    parse_pair,
    parse_questions,
    plan_combos,
    question_request,
)

FIRST_WAVE_MARGIN = 1.25  # ask for 25% more questions than pairs needed, for duplicates and failures
MAX_QUESTION_CALLS_FACTOR = 3  # cap: calls never exceed 3x what a perfect run would need


@dataclass
class DomainBuild:
    domain: Domain
    n: int
    combos: list[Combo]
    dedup: NearDuplicateIndex
    questions: list[Question] = field(default_factory=list)
    accepted: list[Question] = field(default_factory=list)
    pairs: dict[str, Pair] = field(default_factory=dict)  # question id -> pair
    failures: list[Failure] = field(default_factory=list)
    question_calls: int = 0  # calls planned so far (the next call's index)
    questions_asked: int = 0  # calls that ended with questions or a recorded failure
    pair_attempts: int = 0
    cursor: int = 0  # next accepted question to pair
    in_flight: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def needed(self) -> int:
        return self.n - len(self.pairs)


class Builder:
    def __init__(self, cfg: BuildConfig, domains: list[Domain], llm: LLMClient, model: str, quiet: bool):
        self.cfg = cfg
        self.llm = llm
        self.model = model
        self.structured = llm.backend.structured
        self.pair_mode = cfg.pair_mode if cfg.pair_mode != "auto" else ("joint" if self.structured else "separate")
        self.fatal: DsgenError | None = None
        self.crash: BaseException | None = None  # an unexpected error, re-raised once outputs are written
        self._tasks: set[asyncio.Task[Any]] = set()
        self.states = [
            DomainBuild(d, cfg.n, plan_combos(d, cfg.seed), NearDuplicateIndex(cfg.near_duplicate_threshold))
            for d in domains
        ]
        self.max_question_calls = math.ceil(MAX_QUESTION_CALLS_FACTOR * cfg.n / cfg.questions_per_call) + 3
        self.progress = tqdm(
            total=cfg.n * len(domains), desc="pairs", unit="pair", disable=quiet, dynamic_ncols=True, leave=True
        )

    async def run(self) -> None:
        try:
            await asyncio.gather(*(self._build_domain(s) for s in self.states))
        finally:
            # On a stop, Ctrl-C or crash: no call may outlive the run (nor its HTTP client).
            pending = [t for t in self._tasks if not t.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self.progress.close()

    def _spawn(self, coro) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _stop_on(self, err: Exception) -> None:
        """Stop the run on an error no retry fixes: a template that fails to render, or a bug."""
        if isinstance(err, jinja2.TemplateError):
            self.fatal = self.fatal or InputError(f"{template_location(err, 'template')}: {err}")
        else:
            self.crash = self.crash or err
            self.fatal = self.fatal or ResultFailed(f"internal error: {type(err).__name__}: {err}")

    # ---- questions, in waves ----------------------------------------------------------------

    async def _build_domain(self, st: DomainBuild) -> None:
        wave = math.ceil(st.n * FIRST_WAVE_MARGIN / self.cfg.questions_per_call)
        while self.fatal is None and st.needed > 0 and st.question_calls < self.max_question_calls:
            wave = min(wave, self.max_question_calls - st.question_calls)
            first, st.question_calls = st.question_calls, st.question_calls + wave
            calls = [self._spawn(self._ask_questions(st, i)) for i in range(first, first + wave)]
            for i, task in zip(range(first, first + wave), calls):
                outcome = await task  # in call order: duplicates are decided in that order
                if outcome is not None:
                    st.questions_asked += 1
                    self._take_questions(st, i, outcome)
                self._top_up(st)
            while st.tasks:
                await asyncio.gather(*list(st.tasks))
            # Next wave from what the last ones yielded: pairs per question call so far.
            per_call = len(st.pairs) / max(st.question_calls, 1)
            wave = math.ceil(st.needed * 1.3 / max(per_call, 0.2))

    async def _ask_questions(self, st: DomainBuild, call: int) -> tuple[Combo, Outcome[list[str]]] | None:
        try:
            combo, request = question_request(st.domain, st.combos, call, self.cfg, self.model, self.structured)
            outcome = await self._guarded(request, parse_questions(self.cfg.questions_per_call, self.structured))
        except Exception as e:  # noqa: BLE001 - recorded, then the run stops and re-raises it
            self._stop_on(e)
            return None
        return None if outcome is None else (combo, outcome)

    def _take_questions(self, st: DomainBuild, call: int, result: tuple[Combo, Outcome[list[str]]]) -> None:
        combo, outcome = result
        if not outcome.ok:
            self._record_failure(st, "questions", outcome, call=call)
            return
        for pos, text in enumerate(outcome.value or []):
            qid = content_id(st.domain.name, text)
            match = st.dedup.find_or_add(text, qid)
            q = Question(
                id=qid,
                domain=st.domain.name,
                topic=combo.topic,
                subtopic=combo.subtopic,
                persona=combo.persona,
                harm_category=combo.harm_category,
                prompt=text,
                call=call,
                position=pos,
                duplicate_of=match[0] if match else None,
                similarity=match[1] if match else None,
            )
            st.questions.append(q)
            if match is None:
                st.accepted.append(q)

    # ---- pairs, streamed as questions arrive -------------------------------------------------

    def _top_up(self, st: DomainBuild) -> None:
        while self.fatal is None and len(st.pairs) + st.in_flight < st.n and st.cursor < len(st.accepted):
            q = st.accepted[st.cursor]
            st.cursor += 1
            st.in_flight += 1
            st.pair_attempts += 1
            task = self._spawn(self._make_pair(st, q))
            st.tasks.add(task)
            task.add_done_callback(st.tasks.discard)

    async def _make_pair(self, st: DomainBuild, q: Question) -> None:
        try:
            try:
                pair = await self._pair_for(st, q)
            except Exception as e:  # noqa: BLE001 - recorded, then the run stops and re-raises it
                self._stop_on(e)
                pair = None
            if pair is not None:
                st.pairs[q.id] = pair
                self.progress.update(1)
                usage = self.llm.usage
                self.progress.set_postfix(
                    calls=usage.requests,
                    tokens=usage.prompt_tokens + usage.completion_tokens,
                    cost=f"${usage.cost_usd:.3f}",
                    refresh=False,
                )
        finally:
            st.in_flight -= 1
            self._top_up(st)

    async def _pair_for(self, st: DomainBuild, q: Question) -> Pair | None:
        domain, cfg = st.domain, self.cfg
        harm = domain.spec.harm(q.harm_category)
        if self.pair_mode == "joint":
            request = pair_request(domain, q.prompt, harm, cfg, self.model, self.structured)
            harm_names = {h.name for h in domain.spec.harm_categories}
            outcome = await self._guarded(request, parse_pair(harm_names, q.harm_category))
            if outcome is None:
                st.pair_attempts -= 1  # stopped before it was made
                return None
            if not outcome.ok:
                self._record_failure(st, "pair", outcome, question_id=q.id)
                return None
            answers, keys = outcome.value, [outcome.key]
            aligned, misaligned, harm_name = answers.aligned, answers.misaligned, answers.harm_category
        else:
            outcomes = await asyncio.gather(
                *(
                    self._guarded(
                        answer_request(domain, q.prompt, harm, side, cfg, self.model, self.structured),
                        parse_answer(side, self.structured),
                    )
                    for side in ("aligned", "misaligned")
                )
            )
            if any(o is None for o in outcomes):
                st.pair_attempts -= 1  # stopped before it was made
                return None
            for side, o in zip(("aligned", "misaligned"), outcomes):
                if not o.ok:
                    self._record_failure(st, side, o, question_id=q.id)
            if not all(o.ok for o in outcomes):
                return None
            aligned, misaligned = outcomes[0].value, outcomes[1].value
            keys, harm_name = [o.key for o in outcomes], q.harm_category
        return Pair(
            id=content_id(domain.name, q.prompt, aligned, misaligned),
            domain=domain.name,
            topic=q.topic,
            subtopic=q.subtopic,
            persona=q.persona,
            harm_category=harm_name,
            prompt=q.prompt,
            aligned=aligned,
            misaligned=misaligned,
            question_id=q.id,
            pair_mode=self.pair_mode,
            model=self.model,
            cache_keys=keys,
        )

    def _record_failure(
        self,
        st: DomainBuild,
        stage: str,
        outcome: Outcome[Any],
        *,
        call: int | None = None,
        question_id: str | None = None,
    ) -> None:
        st.failures.append(
            Failure(
                stage=stage,
                domain=st.domain.name,
                reason=outcome.reason,
                detail=outcome.detail,
                attempts=outcome.attempts,
                cache_key=outcome.key,
                call=call,
                question_id=question_id,
            )
        )

    async def _guarded(self, request, parse) -> Outcome[Any] | None:
        """A call, or None once the run is stopping (budget or remote failure): nothing new starts."""
        if self.fatal is not None:
            return None
        try:
            return await self.llm.call(request, parse)
        except DsgenError as e:
            self.fatal = self.fatal or e
            return None

    # ---- results -------------------------------------------------------------------------------

    def ordered_results(self) -> tuple[list[Question], list[Pair], list[Failure]]:
        """Deterministic order: domains as given, questions by (call, position), pairs by question order."""
        questions, pairs, failures = [], [], []
        for st in self.states:
            qs = sorted(st.questions, key=lambda q: (q.call, q.position))
            questions += qs
            pairs += [st.pairs[q.id] for q in qs if q.id in st.pairs and q.duplicate_of is None]
            failures += sorted(
                st.failures,
                key=lambda f: (f.stage, f.call if f.call is not None else -1, f.question_id or "", f.cache_key),
            )
        return questions, pairs, failures

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"per_domain": {}}
        for st in self.states:
            reasons = Counter(f"{f.stage}:{f.reason}" for f in st.failures)
            out["per_domain"][st.domain.name] = {
                "question_calls": st.questions_asked,
                "questions": len(st.questions),
                "duplicates": len(st.questions) - len(st.accepted),
                "unique_questions": len(st.accepted),
                "pair_attempts": st.pair_attempts,
                "pairs": len(st.pairs),
                "shortfall": max(0, st.n - len(st.pairs)),
                "failures": dict(sorted(reasons.items())),
            }
        per_pair = 1 if self.pair_mode == "joint" else 2
        logical = sum(st.questions_asked + per_pair * st.pair_attempts for st in self.states)
        failed = sum(len(st.failures) for st in self.states)
        out["logical_calls"] = logical
        out["failed_calls"] = failed
        out["failure_rate"] = round(failed / logical, 4) if logical else 0.0
        out["pairs"] = sum(len(st.pairs) for st in self.states)
        out["shortfall"] = sum(max(0, st.n - len(st.pairs)) for st in self.states)
        return out
