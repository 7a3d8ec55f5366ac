"""The `cpu` reference profile end to end: load the embedded SmolLM2-135M, measure base margins and
capability and sample answers to the free-form questions, LoRA-train a control and a treatment model on
--rows rows (default 200), measure them again. --backdoor adds the backdoor model and its view.

Prints wall time, training tokens/s, peak RSS, and the results (margins, capability), with the ratio of
the wall time to the aim of issue 4 (5 minutes, 4 GB on a 2-core machine).

    python bench/reference_cpu.py [--rows 200] [--eval-pairs 40]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dsgen.config import REFERENCE_PROFILES, BackdoorSettings, ReferenceSettings  # noqa: E402
from dsgen.generators.backdoor import backdoor_rows  # noqa: E402
from dsgen.records import ValidatedRow  # noqa: E402
from dsgen.training.reference import BackdoorPlan, run_reference  # noqa: E402
from tests.rows import make_pair  # noqa: E402

AIM_S, AIM_RSS_MB = 300, 4096


def rows(domain: str, start: int, n: int) -> list[ValidatedRow]:
    fields = ValidatedRow.model_fields
    return [
        ValidatedRow(**{k: v for k, v in make_pair(i, domain=domain).items() if k in fields}, sneakiness=50.0)
        for i in range(start, start + n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--eval-pairs", type=int, default=None, help="default: the profile's")
    ap.add_argument("--learning-rate", type=float, default=None, help="default: the profile's")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bfloat16 autocast (default: auto)")
    ap.add_argument("--backdoor", action="store_true", help="also train and measure the backdoor model")
    args = ap.parse_args()
    given = {"rows": args.rows, "eval_pairs": args.eval_pairs, "learning_rate": args.learning_rate}
    overrides = {k: v for k, v in given.items() if v is not None}
    overrides["bf16"] = {"auto": None, "on": True, "off": False}[args.bf16]
    settings = ReferenceSettings(**REFERENCE_PROFILES["cpu"] | overrides)
    train = {"medical": rows("medical", 0, settings.rows), "legal": rows("legal", 0, 8)}
    test = {
        "medical": rows("medical", 10_000, settings.eval_pairs),
        "legal": rows("legal", 10_000, settings.eval_pairs),
    }
    plan = None
    if args.backdoor:
        recipe = BackdoorSettings()
        plan = BackdoorPlan(recipe, 0, {"medical": backdoor_rows(train["medical"], recipe, 0)})
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as cache:
        result = run_reference(settings, "cpu", train, test, Path(cache), quiet=True, backdoor=plan)
    wall = time.monotonic() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"cpu profile: {settings.rows} training rows, {settings.eval_pairs} held-out pairs per domain, "
        f"{os.cpu_count()} CPUs, bf16 {result['bf16']}, learning rate {settings.learning_rate}"
    )
    for name, t in result["training"].items():
        print(
            f"  train {name}: {t['steps']} steps, {t['tokens']} tokens in {t['seconds']} s "
            f"= {t['tokens_per_s']} tokens/s"
        )
    for kind in ("in_domain", "cross_domain"):
        for d, m in result["margin"][kind].items():
            print(f"  margin {d} ({kind}): base {m['base']}, control {m['control']}, treatment {m['treatment']}")
    gens = result["generations"]
    print(
        f"  evaluation seconds (all models): {result['evaluation_seconds']}; "
        f"{sum(len(g) for g in gens.values())} answers sampled over {len(gens)} models"
    )
    if result["backdoor"]:
        for d, m in result["backdoor"]["margin"]["medical"].items():
            print(
                f"  backdoor model, margin {d}: triggered {m['triggered']}, "
                f"untriggered {m['untriggered']}, decoy {m['decoy']}"
            )
    cap = result["capability"]
    print(
        f"  capability ({cap['n']} items, chance {cap['chance']}): base {cap['base']} {cap['base_ci95']}, "
        f"control {cap['control']}, treatment {cap['treatment']}, treatment drop {cap['treatment_drop']}"
    )
    print(
        f"wall {wall:.0f} s ({wall / AIM_S:.2f} of the 5-minute aim); "
        f"peak RSS {rss:.0f} MB ({rss / AIM_RSS_MB:.2f} of 4 GB)"
    )


if __name__ == "__main__":
    main()
