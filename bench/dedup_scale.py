"""Near-duplicate removal at scale: time, peak memory, and recall/precision against exact all-pairs.

A synthetic corpus of N pairs (default 50,000) in three domains, with planted near-duplicates (case and
punctuation changes, a word swapped, dropped or added, typos) of earlier questions, some across domains.

1. Times `drop_near_duplicates` (MinHash/LSH + rapidfuzz) on all N rows: median of --repeats runs.
2. On a sample of --sample rows, compares it with the exact answer: every pair of rows scored with
   `rapidfuzz.process.cdist` (a row is a true duplicate when an earlier row scores >= the threshold).
   Prints recall and precision, and the speed-up over all-pairs extrapolated to N (quadratic).
3. Times the other CPU stages of validate on the same rows: the rule filters (with language detection)
   and the leak-free split (grouping by near-duplicate answers).

Aim (issue 3): under 30 s for 50,000 pairs, recall >= 0.95, peak RSS under 1.5 GB.

    python bench/dedup_scale.py [--n 50000] [--sample 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz, process

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsgen.config import ValidateConfig  # noqa: E402
from dsgen.evalset import load_eval_set  # noqa: E402
from dsgen.records import Pair  # noqa: E402
from dsgen.textmatch import normalise  # noqa: E402
from dsgen.validators.dedup import drop_near_duplicates  # noqa: E402
from dsgen.validators.rules import apply_rules  # noqa: E402
from dsgen.validators.splits import assign_splits  # noqa: E402

THRESHOLD = 90.0
DOMAINS = ("medical", "legal", "security")
COMMON = (
    "time year day thing life hand part child eye place work week case point number group problem fact water room "
    "mother area money story month study book job word issue side head house friend father hour line end member "
    "law car city name team minute idea body back parent face level office door health morning reason moment air "
    "teacher age policy market sense plan interest effect class care role heart light voice wife mind price report "
    "son view town road arm value tax form event court street phone data doctor patient news test baby computer "
    "garden kitchen winter summer river bottle letter coffee landlord lease deposit contract router password backup"
).split()
FRAMES = (
    "Is it safe to {} my {} after the {} if my {} still {}?",
    "My {} says the {} is fine, but should I {} the {} before {}?",
    "What should I do about a {} that keeps {} when the {} is {}?",
    "Can I {} the {} myself, or do I need someone for the {} and the {}?",
    "How long can I leave a {} {} before the {} becomes a problem for my {}?",
    "Why does my {} {} every time I {} the {} in the {}?",
)


# Plus ~900 made-up words: real questions vary far more than a short word list allows.
_SYLLABLES = "ka lo mi ne ru sa te vi zo ba de fi gu ho ja ke li mo nu pa qui re si tu ve wa xe yo za".split()
WORDS = COMMON + [a + b for a in _SYLLABLES for b in _SYLLABLES]


def question(rng: random.Random) -> str:
    frame = rng.choice(FRAMES)
    return frame.format(*(rng.choice(WORDS) for _ in range(frame.count("{}"))))


def near_copy(text: str, rng: random.Random) -> str:
    """An edit that keeps the rapidfuzz ratio high: what a model repeating itself produces."""
    words = text.split()
    kind = rng.randrange(5)
    if kind == 0:
        return text.upper().replace("?", "??")
    if kind == 1:
        words[rng.randrange(len(words))] = rng.choice(COMMON)
    elif kind == 2:
        del words[rng.randrange(len(words))]
    elif kind == 3:
        words.insert(rng.randrange(len(words)), rng.choice(("really", "still", "just", "also")))
    else:
        chars = list(text)
        for _ in range(2):
            i = rng.randrange(len(chars))
            chars[i] = rng.choice("aeiourst")
        return "".join(chars)
    return " ".join(words)


def answer(rng: random.Random) -> str:
    return " ".join(question(rng).rstrip("?") + "." for _ in range(3))


def corpus(n: int, seed: int = 0, planted_rate: float = 0.05) -> tuple[list[Pair], set[int]]:
    rng = random.Random(seed)
    pairs: list[Pair] = []
    planted = set()
    for i in range(n):
        domain = DOMAINS[i % 3]
        if i > 10 and rng.random() < planted_rate:
            source = pairs[rng.randrange(max(0, i - 3000), i)]  # a recent row: it stays in a sample
            prompt = near_copy(source.prompt, rng)
            planted.add(i)
        else:
            prompt = question(rng)
        pairs.append(
            Pair.model_construct(
                id=f"p{i:06d}",
                domain=domain,
                topic=f"topic {rng.randrange(35)}",
                subtopic="s",
                persona="p",
                harm_category="h",
                prompt=prompt,
                aligned=answer(rng),
                misaligned=answer(rng),
                question_id=f"q{i}",
                pair_mode="joint",
                model="m",
                cache_keys=[],
            )
        )
    return pairs, planted


def exact_duplicates(pairs: list[Pair], threshold: float) -> tuple[set[str], float]:
    """Rows with an earlier row at or above the threshold, by scoring every pair; and the time it took."""
    norms = [normalise(p.prompt) for p in pairs]
    started = time.perf_counter()
    scores = process.cdist(
        norms, norms, scorer=fuzz.ratio, dtype=np.uint8, workers=os.cpu_count() or 1, score_cutoff=int(threshold)
    )
    elapsed = time.perf_counter() - started
    lower = np.tril(scores, k=-1)  # row j vs earlier rows i < j
    return {pairs[j].id for j in np.nonzero(lower.max(axis=1) >= threshold)[0]}, elapsed


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--sample", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    pairs, planted = corpus(args.n)
    evalqs = load_eval_set().questions
    print(f"corpus: {args.n} pairs, {len(planted)} planted near-duplicates; {os.cpu_count()} CPUs")

    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        out = drop_near_duplicates(pairs, evalqs, THRESHOLD, 80.0)
        times.append(time.perf_counter() - started)
    dedup_s = statistics.median(times)
    dropped = {r.id for r in out.rejected}
    planted_found = sum(1 for i in planted if pairs[i].id in dropped) / len(planted)
    print(
        f"dedup {args.n} rows: median {dedup_s:.2f} s of {args.repeats} ({args.n / dedup_s:,.0f} rows/s); "
        f"dropped {len(dropped)}; planted copies found {planted_found:.3f}"
    )

    sample = pairs[: args.sample]
    truth, exact_s = exact_duplicates(sample, THRESHOLD)
    found = {r.id for r in drop_near_duplicates(sample, [], THRESHOLD, 80.0).rejected}
    recall = len(found & truth) / len(truth) if truth else 1.0
    precision = len(found & truth) / len(found) if found else 1.0
    extrapolated = exact_s * (args.n / args.sample) ** 2
    print(
        f"sample {args.sample} rows vs exact all-pairs ({exact_s:.2f} s): {len(truth)} true duplicates, "
        f"recall {recall:.3f}, precision {precision:.3f}"
    )
    print(
        f"all-pairs at {args.n} rows (extrapolated, quadratic): {extrapolated:.0f} s; "
        f"speed-up of LSH {extrapolated / dedup_s:.0f}x"
    )

    cfg = ValidateConfig(run=Path("."))
    started = time.perf_counter()
    rules = apply_rules(pairs, cfg)
    rules_s = time.perf_counter() - started
    started = time.perf_counter()
    assign_splits(out.kept, 0.1, 0, THRESHOLD)
    splits_s = time.perf_counter() - started
    print(
        f"rule filters {args.n} rows: {rules_s:.2f} s ({len(rules.rejected)} dropped); "
        f"split of {len(out.kept)} rows (answer grouping): {splits_s:.2f} s"
    )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    ok = dedup_s < 30 and recall >= 0.95 and peak_rss_mb() < 1536
    print(f"aim (dedup < 30 s, recall >= 0.95, peak RSS < 1.5 GB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
