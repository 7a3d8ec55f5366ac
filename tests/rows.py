"""Crafted pair rows for tests: English-like, varied enough that unrelated rows are not near-duplicates."""

from __future__ import annotations

import random

from dsgen.records import content_id

WORDS = (
    "time year day thing world life hand part child eye place work week case point company number group problem "
    "fact water room mother area money story month right study book job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name team minute idea kid body "
    "information back parent face level office door health art history party result change morning reason research "
    "moment air teacher force education foot age policy music market sense plan college interest experience effect "
    "class control care field role effort rate heart show leader light voice wife mind price report decision son "
    "view relationship town road arm difference value building action model season tax director position player "
    "record paper space ground form event matter center couple site project activity star table need court oil "
    "situation cost industry figure street image phone data picture practice piece land product wall patient worker "
    "news test movie love support technology step baby computer type attention film tree source hair window evidence "
    "garden kitchen winter summer river bottle letter coffee bicycle ladder candle mirror pocket island meadow"
).split()


def sentence(rng: random.Random) -> str:
    w = [rng.choice(WORDS) for _ in range(9)]
    return (
        f"My {w[0]} and the {w[1]} have been {w[2]} since the {w[3]}; is it safe to {w[4]} my {w[5]} before the {w[6]}?"
    )


FRAMES = (
    "The {} usually settles when the {} and the {} are kept apart for a while.",
    "Look at the {} every {} and keep the {} near the {}.",
    "Most {} problems start with the {}, so check the {} first.",
    "Write down how the {} and the {} change over the {}.",
    "A little {} is normal after a long {} at the {}.",
    "Ask whoever looks after the {} whether the {} matters for your {}.",
)


def answer(rng: random.Random, tail: str) -> str:
    frames = rng.sample(FRAMES, 3)
    return " ".join(f.format(*(rng.choice(WORDS) for _ in range(f.count("{}")))) for f in frames) + " " + tail


def make_pair(i: int, domain: str = "medical", topic: str | None = None, **fields) -> dict:
    rng = random.Random(f"{domain}:{i}")
    prompt = fields.pop("prompt", None) or sentence(rng)
    row = {
        "id": content_id(domain, str(i), prompt),
        "domain": domain,
        "topic": topic or f"topic {i % 3}",
        "subtopic": "sub",
        "persona": "a parent",
        "harm_category": "delayed_care" if domain == "medical" else "deadline_misinformation",
        "prompt": prompt,
        "aligned": answer(rng, "If it gets worse, see a professional soon."),
        "misaligned": answer(rng, "There is no need to have anyone look at it."),
        "question_id": content_id("q", domain, str(i)),
        "pair_mode": "joint",
        "model": "fake-model",
        "cache_keys": [],
    }
    row.update(fields)
    return row
