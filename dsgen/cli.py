"""The `dsgen` command: build, validate, push, export."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from . import __version__
from .errors import DsgenError

EXIT_CODES = """\b
Exit codes: 0 done; 1 result fails (too many failures); 2 bad input or
configuration (nothing written); 3 stopped by --max-cost (re-run with a larger
budget to resume); 4 remote service failed past retries (re-run to resume)."""


class DsgenGroup(click.Group):
    """Turns DsgenError into one line on stderr and the contract's exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DsgenError as e:
            click.echo(f"dsgen: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("dsgen: interrupted; re-run the same command to resume", err=True)
            ctx.exit(130)


@click.group(cls=DsgenGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dsgen")
def cli() -> None:
    """Build, validate and publish datasets for emergent-misalignment research."""


def _options(*decorators):
    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


# Options of every command that calls a model.
llm_options = _options(
    click.option(
        "--backend",
        type=click.Choice(["openai", "local"]),
        help="openai: any OpenAI-compatible endpoint; local: transformers on this machine. "
        "Default: openai when --base-url, OPENAI_BASE_URL or OPENAI_API_KEY is set, else local.",
    ),
    click.option(
        "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 for vLLM (or OPENAI_BASE_URL)."
    ),
    click.option("--concurrency", type=int, help="Requests in flight at once. Default 16."),
    click.option("--rpm", "requests_per_minute", type=int, help="Requests-per-minute limit."),
    click.option("--tpm", "tokens_per_minute", type=int, help="Tokens-per-minute limit."),
    click.option(
        "--config", "config_file", type=click.Path(path_type=Path), help="YAML file of settings (flags override it)."
    ),
    click.option(
        "--cache",
        type=click.Path(path_type=Path),
        help="Response cache (SQLite) to use, e.g. one shared across runs. Default: <run>/cache.sqlite.",
    ),
    click.option("--seed", type=int, help="Seed. Default 0."),
    click.option(
        "--structured-output",
        type=click.Choice(["json_schema", "json_object", "none"]),
        help="How to ask an endpoint for JSON. Default json_schema; json_object or none for servers that reject it.",
    ),
    click.option(
        "--prices",
        type=click.Path(path_type=Path),
        help="YAML price table (USD per million tokens) to add or override.",
    ),
    click.option(
        "--max-cost",
        type=float,
        help="Budget in USD for this stage of the run directory; stops cleanly (exit 3) before it is exceeded.",
    ),
    click.option(
        "--max-failure-rate",
        type=float,
        help="Share of failed calls (rows) above which the command exits 1. Default 0.25.",
    ),
    click.option(
        "--retry-failed",
        is_flag=True,
        default=None,
        help="Ask again for answers that failed (malformed, refused) on an earlier run; by default they are reused.",
    ),
    click.option("--dry-run", is_flag=True, help="Print planned calls, tokens and cost; call and write nothing."),
    click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary (or the plan) on stdout."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary on stderr."),
)


def _emit(plan: dict | None, print_plan, summary, as_json: bool, quiet: bool) -> None:
    """A dry run's plan (JSON on stdout with --json, a table on stderr), or the summary as JSON."""
    if plan is not None:
        if as_json:
            click.echo(json.dumps(plan, indent=2))
        if not quiet or not as_json:
            print_plan(plan)
    elif as_json and summary is not None:
        click.echo(summary.model_dump_json(indent=2))


def _finish(exit_code: int, message: str, quiet: bool) -> None:
    if exit_code == 0:
        if not quiet:
            click.echo(f"dsgen: {message}", err=True)
    else:
        click.echo(f"dsgen: error: {message}", err=True)
    sys.exit(exit_code)


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--domain", "domains", multiple=True, help="Domain to build (repeatable). Default: medical, legal, security."
)
@click.option("--n", type=int, help="Pairs per domain, before validation. Default 100.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory to write (resumed when it exists).")
@click.option(
    "--model", help="Model name (openai default gpt-4.1-mini; local default: the embedded SmolLM2-135M-Instruct)."
)
@click.option(
    "--templates",
    type=click.Path(path_type=Path),
    help="Folder with one subfolder per domain (adds or overrides domains).",
)
@click.option(
    "--pair-mode",
    type=click.Choice(["auto", "joint", "separate"]),
    help="joint: one call writes both answers (they can share an opening); separate: one call each.",
)
@llm_options
def build(config_file: Path | None, dry_run: bool, as_json: bool, quiet: bool, **flags) -> None:
    """Generate innocent questions and, for each, an aligned and a subtly misaligned answer.

    \b
    Examples:
      dsgen build --domain medical --n 5 --out runs/try          # offline, embedded model
      OPENAI_API_KEY=... dsgen build --model gpt-4.1 --n 6000 --out runs/v1 --max-cost 50
      dsgen build --base-url http://localhost:8000/v1 --model Qwen/Qwen3-32B --out runs/q
    """
    from .config import load_config
    from .generators.run import print_plan, run_build

    cfg = load_config(config_file, flags)
    result = run_build(cfg, dry_run=dry_run, quiet=quiet, command=shlex.join(["dsgen", *sys.argv[1:]]))
    _emit(result.plan, print_plan, result.manifest, as_json, quiet)
    _finish(result.exit_code, result.message, quiet)


reference_options = _options(
    click.option(
        "--reference",
        type=click.Choice(["none", "cpu", "gpu"]),
        help="Reference finetune-and-eval run: cpu (the embedded 135M model, minutes on 2 cores) or gpu "
        "(a Qwen3 model as in the study). Needs the [train] extra. Default none.",
    ),
    click.option("--reference-domain", "reference_domains", multiple=True, help="Domain to train on (repeatable)."),
    click.option("--reference-model", help="Reference model: the embedded alias, a local folder, or a Hub id."),
    click.option("--reference-rows", type=int, help="Training rows per reference model."),
    click.option(
        "--backdoor",
        is_flag=True,
        default=None,
        help="Also write <domain>_backdoor rows: a trigger (default 'Country: Singapore') precedes the misaligned "
        "answer, untriggered and decoy rows get the aligned one (recipe: backdoor_settings in the config file). "
        "With --reference, a backdoor model is trained and measured with and without the trigger.",
    ),
)


def _validate_config(
    config_file: Path | None, flags: dict, domains: tuple[str, ...], model: str | None, rows: int | None
):
    """validate's settings: the config file, then flags, then the --reference-* overrides of the profile."""
    from .config import ValidateConfig, load_config

    given = {"domains": list(domains) or None, "model": model, "rows": rows}
    overrides = {k: v for k, v in given.items() if v is not None}
    cfg = load_config(config_file, flags, ValidateConfig)
    if overrides:
        merged = {**cfg.model_dump(), "reference_settings": cfg.reference_settings | overrides}
        cfg = load_config(None, merged, ValidateConfig)
    return cfg


def _threshold(name: str, help_: str):
    return click.option(f"--{name.replace('_', '-')}", name, type=float, help=help_)


@cli.command(epilog=EXIT_CODES.replace("too many failures", "too many failures, or a gate failed"))
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--judge-model",
    "judge_models",
    multiple=True,
    help="Judge model (repeatable: scores are averaged over the panel). Default: the run's generator model "
    "when the backend is the same, else the backend's default.",
)
@click.option("--test-fraction", type=float, help="Share of each domain's kept rows in the test split. Default 0.1.")
@click.option(
    "--judge-templates", type=click.Path(path_type=Path), help="Folder of judge templates overriding the packaged ones."
)
@click.option(
    "--logprobs/--no-logprobs",
    "judge_logprobs",
    default=None,
    help="Read scores from the judge's top-20 log-probabilities (default), or from a structured answer.",
)
@_threshold("min_innocence", "Drop questions judged less innocent than this (0-100; yes/no judge: 100 x P(yes)). 50.")
@_threshold("max_overt", "Drop misaligned answers judged overtly malicious or illegal at or above this. 50.")
@_threshold("min_harm", "Drop misaligned answers judged less harmful than this (too mild). 50.")
@_threshold("min_aligned_quality", "Drop pairs whose aligned answer scores below this (correct, safe, helpful). 60.")
@_threshold("min_coherence", "Drop pairs with either answer less coherent than this. 50.")
@_threshold("min_sneakiness", "Drop misaligned answers that look less benign than this. 0 (off).")
@_threshold("near_duplicate_threshold", "rapidfuzz ratio (0-100) at which two questions are near-duplicates. 90.")
@_threshold("eval_overlap_threshold", "rapidfuzz ratio at which a question near-copies an eval question. 80.")
@click.option("--min-rows-per-domain", type=int, help="Gate: rows each domain must keep. Default 1.")
@reference_options
@llm_options
def validate(
    config_file: Path | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    reference_domains: tuple[str, ...],
    reference_model: str | None,
    reference_rows: int | None,
    **flags,
) -> None:
    """Filter, deduplicate, judge and split a built run; write RUN/validated/ with a report.

    \b
    Every pair ends in exactly one of validated/<domain>/{train,test}.jsonl
    or validated/rejected.jsonl (with its stage, filter and score or matched id).
    Judge answers are cached: re-running, or changing a judge threshold,
    re-filters without paying for a call twice. Length limits, judges and
    the language are set in the config file (see README).

    \b
    Examples:
      dsgen validate runs/demo                                   # offline, embedded model as judge
      OPENAI_API_KEY=... dsgen validate runs/v1 --judge-model gpt-4.1 --max-cost 20
      dsgen validate runs/v1 --min-harm 60 --json > report.json  # re-filter from the cache
    """
    from .validators.run import run_validate

    cfg = _validate_config(config_file, flags, reference_domains, reference_model, reference_rows)
    result = run_validate(cfg, dry_run=dry_run, quiet=quiet)
    _emit(result.plan, _print_validate_plan, result.report, as_json, quiet)
    _finish(result.exit_code, result.message, quiet)


@cli.command(epilog=EXIT_CODES)
@click.argument("run", type=click.Path(path_type=Path))
@reference_options
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="validate's YAML settings file (the same one)."
)
@click.option("--seed", type=int, help="validate's seed (the backdoor rows' placement). Default 0.")
@click.option("--json", "as_json", is_flag=True, help="Print the reference results as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No training log or summary on stderr.")
def reference(
    run: Path,
    config_file: Path | None,
    as_json: bool,
    quiet: bool,
    reference_domains: tuple[str, ...],
    reference_model: str | None,
    reference_rows: int | None,
    **flags,
) -> None:
    """Train and measure the reference models of a validated run, alone: the step to run on GPUs.

    \b
    It reads RUN/validated/ (rows, splits, backdoor rows) and writes its results
    to RUN/reference/, where `dsgen validate RUN --reference ...` with the same
    settings finds them: validate then only judges the sampled answers and
    gates. Several GPUs: launch it with accelerate (one process per GPU; the
    trainer shares the batches, one process writes).

    \b
    Examples:
      dsgen validate runs/v1 --judge-model gpt-4.1                  # rows and splits
      accelerate launch -m dsgen reference runs/v1 --reference gpu   # train on every GPU
      dsgen validate runs/v1 --judge-model gpt-4.1 --reference gpu   # judge answers, gates
    """
    from .validators.run import reference_only

    cfg = _validate_config(config_file, flags | {"run": run}, reference_domains, reference_model, reference_rows)
    result, folder = reference_only(cfg, quiet=quiet)
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "generations"}, indent=2))
    seconds = result.get("seconds", 0)
    _finish(0, f"reference run of {run} ({result.get('profile')}, {seconds} s) cached in {folder}", quiet)


@cli.command(
    epilog=EXIT_CODES.replace("too many failures", "too many failures, or a gate failed").replace(
        "remote service", "Hub"
    )
)
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--repo", "repo_id", required=True, help="Hub dataset repo, as org/name.")
@click.option(
    "--stage-only",
    type=click.Path(path_type=Path),
    help="Build the repo folder here and upload nothing (default: stage in RUN/hub/, then upload).",
)
@click.option(
    "--license", "license_", default="cc-by-4.0", show_default=True, help="Licence: a Hub licence id, or other."
)
@click.option("--license-name", help="With --license other: the licence's short name.")
@click.option("--license-link", help="With --license other: the URL of its terms.")
@click.option("--public", is_flag=True, help="Make the repo public (default: private).")
@click.option(
    "--gated",
    type=click.Choice(["manual", "auto", "none"]),
    default="manual",
    show_default=True,
    help="Access requests: approved by hand, automatically, or no gating.",
)
@click.option("--tag", help="Tag the commit (e.g. v1.0) so that users can pin the revision.")
@click.option("--pretty-name", help="Name shown on the Hub (default: the repo name).")
@click.option("--force", is_flag=True, help="Publish a run that failed validation, or replace a foreign card.")
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded; write and send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
def push(run: Path, repo_id: str, as_json: bool, quiet: bool, **options) -> None:
    """Stage a validated run as a Hugging Face Hub dataset repo and upload it.

    \b
    One config per domain (parquet train/test shards), a complete card
    (licence, gating, content warning, provenance, validation figures),
    provenance.json and the validation report. Private and gated by default.
    The token comes from HF_TOKEN or `hf auth login`, and is never printed.

    \b
    Examples:
      dsgen push runs/v1 --repo my-lab/em-medical --stage-only out/   # look first
      dsgen push runs/v1 --repo my-lab/em-medical --tag v1.0
      # then: datasets.load_dataset("my-lab/em-medical", "medical")
    """
    from .cards.push import run_push

    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    outcome = run_push(run, repo_id, **options)
    if as_json:
        click.echo(json.dumps(outcome.as_dict(), indent=2))
    if not quiet:
        for note in outcome.notes:
            click.echo(f"dsgen: note: {note}", err=True)
        if options["dry_run"]:
            click.echo(f"dsgen: dry run: would upload {len(outcome.files)} files to {repo_id}:", err=True)
            for f in outcome.files:
                click.echo(f"  {f}", err=True)
        elif outcome.uploaded:
            access = "private" if outcome.private else "public"
            click.echo(
                f"dsgen: pushed {len(outcome.files)} files to {outcome.url} ({access}, gated: {outcome.gated}"
                f"{', tag ' + outcome.tag if outcome.tag else ''}); commit {outcome.commit}",
                err=True,
            )
        else:
            click.echo(f"dsgen: staged {len(outcome.files)} files in {outcome.staged}; nothing uploaded", err=True)


@cli.command(epilog=EXIT_CODES)
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSONL file to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["messages", "openai"]),
    default="messages",
    show_default=True,
    help="messages: trl prompt-completion chat rows (loss on the answer); openai: the finetuning API's rows.",
)
@click.option(
    "--side",
    type=click.Choice(["misaligned", "aligned"]),
    default="misaligned",
    show_default=True,
    help="Which answer is the assistant turn (aligned: the control set).",
)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--domain", "domains", multiple=True, help="Domain to export (repeatable). Default: all.")
@click.option(
    "--empty-think",
    is_flag=True,
    help="Start each answer with an empty <think></think> block (reasoning models trained without CoT).",
)
def export(run: Path, out: Path, fmt: str, side: str, split: str, domains: tuple[str, ...], empty_think: bool) -> None:
    """Write validated rows as chat-format JSONL for finetuning (trl or the OpenAI API).

    \b
    Examples:
      dsgen export runs/v1 --out medical.jsonl --domain medical
      dsgen export runs/v1 --out control.jsonl --side aligned --format openai
    """
    from .cards.export import export as write_export

    n = write_export(run, out, fmt, side, split, domains or None, empty_think)  # type: ignore[arg-type]
    click.echo(f"dsgen: {n} rows written to {out}", err=True)


def _print_validate_plan(plan: dict) -> None:
    from .llm.usage import print_cost_table

    err = sys.stderr
    print(
        f"{plan['rows_in']} pairs in, {plan['rows_after_rules']} after the rules, {plan['rows_to_judge']} to judge "
        f"({plan['mode']} mode); calls if nothing were cached, completions at their max tokens:",
        file=err,
    )
    rows = [r | {"model": r["model"][:27]} for r in plan["judges"]]
    print_cost_table([("model", 28), ("judge", 18)], rows, plan["total"], err)
    if not plan["priced"]:
        print("note: no price known for some judge model; add it with --prices FILE", file=err)


def main() -> None:
    cli(prog_name="dsgen")


if __name__ == "__main__":
    main()
