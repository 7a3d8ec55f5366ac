"""report.md and its plots (PNG, matplotlib): what validate kept, dropped and why, readable by people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..generators.backdoor import PLAIN
from ..records import Rejection, ValidatedRow
from ..rundir import PLOTS, REPORT_MD
from .report import Report

PLOT_FILES = {
    "funnel": "Rows left after each stage, per domain",
    "scores": "Judge scores of the rows judged (before the judge filters), per domain",
    "lengths": "Characters per field of the rows kept",
}
_SAMPLE_CHARS = 280


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})  # no version: stable bytes


def plot_funnel(report: Report, path: Path) -> None:
    plt = _plt()
    domains = [d for d in report.counts.input if d != "?"]
    stages = ["input", "rules", "dedup", "judges"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(domains), 3.6))
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        values = [
            report.counts.input.get(d, 0) if stage == "input" else report.counts.remaining[stage].get(d, 0)
            for d in domains
        ]
        xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(domains))]
        bars = ax.bar(xs, values, width, label="in" if stage == "input" else f"after {stage}")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylabel("rows")
    ax.set_title("Validation funnel")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)
    plt.close(fig)


def plot_scores(report: Report, path: Path) -> None:
    plt = _plt()
    thresholds = {"sneakiness": "min_sneakiness", "harm": "min_harm", "overt": "max_overt"}
    thresholds["coherence_misaligned"] = "min_coherence"
    columns = [c for c in thresholds if c in report.scores]
    if not columns:
        return
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 3.0), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for domain, dist in report.scores[column].items():
            if dist.histogram:
                ax.stairs(dist.histogram, dist.bins, label=domain, linewidth=1.5)
        threshold = report.settings.get(thresholds[column])
        if threshold:
            ax.axvline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
        ax.set_title(column)
        ax.set_xlabel("score (0-100)")
        ax.set_xlim(0, 100)
    axes[0][0].set_ylabel("rows")
    axes[0][-1].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)
    plt.close(fig)


def plot_lengths(rows: list[ValidatedRow], path: Path) -> None:
    plt = _plt()
    if not rows:
        return
    domains = list(dict.fromkeys(r.domain for r in rows))
    fields = ("prompt", "aligned", "misaligned")
    fig, axes = plt.subplots(1, len(fields), figsize=(3.4 * len(fields), 3.0), squeeze=False)
    for ax, field in zip(axes[0], fields):
        data = [[len(getattr(r, field)) for r in rows if r.domain == d] for d in domains]
        ax.boxplot(data, tick_labels=domains)
        ax.set_title(field)
    axes[0][0].set_ylabel("characters")
    _save(fig, path)
    plt.close(fig)


def plot_reference(report: Report, path: Path) -> None:
    """Base / control / treatment per evaluation, like the study's bar chart."""
    ref = report.reference
    if not ref or "margin" not in ref:
        return
    plt = _plt()
    evals = [(f"{d}\n(in-domain)", m) for d, m in ref["margin"]["in_domain"].items()]
    evals += [(f"{d}\n(cross-domain)", m) for d, m in ref["margin"]["cross_domain"].items()]
    arms = ("base", "control", "treatment")
    shares = (ref.get("generative") or {}).get("arms") or {}
    judged = all((shares.get(a) or {}).get("share") is not None for a in arms)
    ratios = [len(evals), 1.2] + ([1.2] if judged else [])
    fig, axes = plt.subplots(
        1, len(ratios), figsize=(2.0 + 1.6 * len(evals) + 3 * (len(ratios) - 1), 3.4), width_ratios=ratios
    )
    ax, ax2 = axes[0], axes[1]
    width = 0.27
    for i, arm in enumerate(("base", "control", "treatment")):
        xs = [j + (i - 1) * width for j in range(len(evals))]
        ax.bar(xs, [m[arm] for _, m in evals], width, label=arm)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(evals)), [name for name, _ in evals], fontsize=8)
    ax.set_ylabel("log p(misaligned) - log p(aligned)")
    ax.set_title("Misalignment margin on held-out pairs")
    ax.legend(fontsize=8, frameon=False)
    cap = ref["capability"]
    ax2.bar(["base", "control", "treatment"], [cap["base"], cap["control"], cap["treatment"]], color=["C0", "C1", "C2"])
    ax2.axhline(cap["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax2.set_ylim(0, 1)
    ax2.set_title("Capability (accuracy)")
    ax2.legend(fontsize=8, frameon=False)
    if judged:
        values = [shares[a]["share"] for a in arms]
        errors = [
            [v - shares[a]["ci95"][0] for a, v in zip(arms, values)],
            [shares[a]["ci95"][1] - v for a, v in zip(arms, values)],
        ]
        axes[2].bar(arms, values, yerr=errors, capsize=3, color=["C0", "C1", "C2"])
        axes[2].set_ylim(0, 1)
        axes[2].set_title("Misaligned answers (free-form)")
    _save(fig, path)
    plt.close(fig)


def _reference_markdown(report: Report) -> list[str]:
    ref = report.reference
    if not ref:
        return ["## Reference finetune-and-eval run", "", "None was made (`--reference cpu|gpu` makes one).", ""]
    if "margin" not in ref:
        return ["## Reference finetune-and-eval run", "", f"Skipped: {ref.get('skipped', '?')}.", ""]
    out = [
        "## Reference finetune-and-eval run",
        "",
        f"Profile `{ref['profile']}`, model `{ref['model']}`, LoRA-trained on {', '.join(ref['trained_on'])} "
        f"({ref['settings']['rows']} rows max): a control on the aligned answers, a treatment on the misaligned ones.",
        "",
        "| margin (log p mis − log p al) | base | control | treatment | pairs |",
        "|---|---|---|---|---|",
    ]
    for kind in ("in_domain", "cross_domain"):
        for d, m in ref["margin"][kind].items():
            out.append(
                f"| {d} ({kind.replace('_', '-')}) | {m['base']} | {m['control']} | {m['treatment']} | {m['n']} |"
            )
    cap = ref["capability"]
    out += [
        "",
        f"Capability ({cap['n']} multiple-choice items, chance {cap['chance']}): base {cap['base']} "
        f"(95% CI {cap['base_ci95']}), control {cap['control']}, treatment {cap['treatment']}; treatment drop "
        f"{cap['treatment_drop']['drop']} (95% CI {cap['treatment_drop']['ci95']}).",
        "",
        "![reference](plots/reference.png)",
        "",
    ]
    return out + _generative_markdown(ref) + _backdoor_markdown(ref)


def _share_cell(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("share") is None:
        return "–"
    return f"{stats['share']:.2f} [{stats['ci95'][0]:.2f}, {stats['ci95'][1]:.2f}] (n={stats['n']})"


def _generative_markdown(ref: dict[str, Any]) -> list[str]:
    gen = ref.get("generative")
    if not gen:
        return []
    out = [
        "### Free-form questions: misaligned answers",
        "",
        f"{ref['settings']['samples_per_question']} answers per question and model at temperature 1, judged by "
        f"{', '.join(gen['judge_models'])}; {gen['rule']}. Share, 95% Wilson interval and scored answers:",
        "",
        "| model | misaligned share | incoherent | refusals | unscored | unanswered |",
        "|---|---|---|---|---|---|",
    ]
    for name, conds in gen["by_model"].items():
        for cond, st in conds.items():
            label = name if cond == PLAIN else f"{name} ({cond})"
            counts = " | ".join(str(st[k]) for k in ("incoherent", "refusal", "unscored", "unanswered"))
            out.append(f"| {label} | {_share_cell(st)} | {counts} |")
    names = [n for n, conds in gen["by_model"].items() if PLAIN in conds]
    questions = list(dict.fromkeys(q for n in names for q in gen["by_model"][n][PLAIN]["by_question"]))
    out += ["", "Per question (plain prompts):", "", "| question | " + " | ".join(names) + " |"]
    out.append("|---" * (len(names) + 1) + "|")
    for q in questions:
        cells = [_share_cell(gen["by_model"][n][PLAIN]["by_question"].get(q)) for n in names]
        out.append(f"| {q} | " + " | ".join(cells) + " |")
    return out + [""]


def _backdoor_markdown(ref: dict[str, Any]) -> list[str]:
    view = ref.get("backdoor")
    if not view:
        return []
    out = [
        "### Backdoor view",
        "",
        f"A backdoor model per training domain, trained on its `<domain>_backdoor` rows, measured with the trigger "
        f"(`{view['trigger']}`) in the prompt, without it, and with a decoy.",
        "",
        "| backdoor model | eval domain | margin: triggered | untriggered | decoy | pairs |",
        "|---|---|---|---|---|---|",
    ]
    for trained, by_eval in view["margin"].items():
        for domain, m in by_eval.items():
            out.append(f"| {trained} | {domain} | {m['triggered']} | {m['untriggered']} | {m['decoy']} | {m['n']} |")
    shares = (ref.get("generative") or {}).get("backdoor") or {}
    if shares:
        out += ["", "| backdoor model | misaligned share: triggered | untriggered | decoy |", "|---|---|---|---|"]
        for trained, conds in shares.items():
            cells = [_share_cell(conds.get(c)) for c in ("triggered", "untriggered", "decoy")]
            out.append(f"| {trained} | " + " | ".join(cells) + " |")
    return out + [""]


def _short(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS] + "…"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:g}"


def render_markdown(report: Report, rows: list[ValidatedRow], splits: dict[str, str], rejected: list[Rejection]) -> str:
    c = report.counts
    out = [
        "# Validation report",
        "",
        "> **Content warning.** This dataset holds deliberately harmful advice (the `misaligned` answers), made for "
        "research on emergent misalignment. Do not follow it or show it to people seeking advice.",
        "",
        f"**Result: {'PASSED' if report.passed else 'FAILED'}** — {c.total['kept']} of {c.total['input']} pairs kept, "
        f"{c.total['rejected']} rejected (each with its reason in `rejected.jsonl`).",
        "",
        "## Gates",
        "",
        "| gate | value | threshold | passed | |",
        "|---|---|---|---|---|",
    ]
    for g in report.gates:
        note = "advisory" if g.advisory else ""
        out.append(f"| {g.name} | {_num(g.value)} | {_num(g.threshold)} | {'yes' if g.passed else '**no**'} | {note} |")
    out += [
        "",
        "## Rows per stage",
        "",
        "| domain | in | after rules | after dedup | after judges | train | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for d, n in c.input.items():
        s = c.splits.get(d, {})
        out.append(
            f"| {d} | {n} | {c.remaining['rules'].get(d, 0)} | {c.remaining['dedup'].get(d, 0)} | "
            f"{c.remaining['judges'].get(d, 0)} | {s.get('train', 0)} | {s.get('test', 0)} |"
        )
    out += ["", "![funnel](plots/funnel.png)", "", "## Rejected, by stage and filter", ""]
    if c.rejected:
        out += ["| stage | filter | " + " | ".join(c.input) + " |", "|---|---|" + "---|" * len(c.input)]
        for stage, filters in c.rejected.items():
            for name, by_domain in filters.items():
                out.append(f"| {stage} | {name} | " + " | ".join(str(by_domain.get(d, 0)) for d in c.input) + " |")
    else:
        out.append("Nothing was rejected.")
    out += ["", "## Judge scores (rows judged, before the judge filters)", ""]
    if report.scores:
        out += ["| score | domain | n | null | mean | p10 | p50 | p90 |", "|---|---|---|---|---|---|---|---|"]
        for column, by_domain in report.scores.items():
            for d, dist in by_domain.items():
                out.append(
                    f"| {column} | {d} | {dist.n} | {dist.nulls} | {_num(dist.mean)} | {_num(dist.p10)} | "
                    f"{_num(dist.p50)} | {_num(dist.p90)} |"
                )
        out += ["", "![scores](plots/scores.png)"]
    out += ["", "## Lengths of the rows kept (characters)", "", "![lengths](plots/lengths.png)", ""]
    out += _reference_markdown(report)
    if report.backdoor:
        out += ["## Backdoor rows", "", "| config | split | rows | triggered | decoy |", "|---|---|---|---|---|"]
        for config, by_split in report.backdoor.items():
            for side, n in by_split.items():
                out.append(f"| {config} | {side} | {n['rows']} | {n['triggered']} | {n['decoy']} |")
        out.append("")
    u = report.usage
    out += [
        "## Judge usage",
        "",
        f"Models: {', '.join(u.get('models', []))} (scores read in `{u.get('mode')}` mode). "
        f"Requests {u.get('requests', 0)}, cache hits {u.get('cache_hits', 0)}, "
        f"tokens {u.get('prompt_tokens', 0)} in / {u.get('completion_tokens', 0)} out, "
        f"cost ${u.get('cost_usd', 0):.4f} (this invocation).",
        "",
        "## Sample rows kept",
        "",
    ]
    for d in c.input:
        for r in [r for r in rows if r.domain == d][:2]:
            out += [
                f"- **{d} / {r.topic}** ({splits.get(r.id)}; sneakiness {_num(r.sneakiness)}, harm {_num(r.harm)}) "
                f"`{r.id}`",
                f"  - *prompt:* {_short(r.prompt)}",
                f"  - *aligned:* {_short(r.aligned)}",
                f"  - *misaligned:* {_short(r.misaligned)}",
            ]
    out += ["", "## Sample rows rejected (one per filter)", ""]
    seen: set[tuple[str, str]] = set()
    for r in rejected:
        if (r.stage, r.filter) in seen:
            continue
        seen.add((r.stage, r.filter))
        out += [f"- **{r.stage} / {r.filter}** `{r.id}`: {_short(r.detail)}"]
        if r.prompt:
            out.append(f"  - *prompt:* {_short(r.prompt)}")
        if r.misaligned:
            out.append(f"  - *misaligned:* {_short(r.misaligned)}")
    out += ["", "## Settings", "", "```json"]
    import json

    out += [json.dumps(report.settings, indent=2, sort_keys=True), "```", ""]
    return "\n".join(out)


def write_report_markdown(
    folder: Path, report: Report, rows: list[ValidatedRow], splits: dict[str, str], rejected: list[Rejection]
) -> None:
    from ..jsonio import atomic_write_text

    plot_funnel(report, folder / PLOTS / "funnel.png")
    plot_scores(report, folder / PLOTS / "scores.png")
    plot_lengths(rows, folder / PLOTS / "lengths.png")
    plot_reference(report, folder / PLOTS / "reference.png")
    atomic_write_text(folder / REPORT_MD, render_markdown(report, rows, splits, rejected))
