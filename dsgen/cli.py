"""The `dsgen` command: build (validate and push come with their issues)."""

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


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--domain", "domains", multiple=True, help="Domain to build (repeatable). Default: medical, legal, security."
)
@click.option("--n", type=int, help="Pairs per domain, before validation. Default 100.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory to write (resumed when it exists).")
@click.option(
    "--backend",
    type=click.Choice(["openai", "local"]),
    help="openai: any OpenAI-compatible endpoint; local: transformers on this machine. "
    "Default: openai when --base-url, OPENAI_BASE_URL or OPENAI_API_KEY is set, else local.",
)
@click.option(
    "--model", help="Model name (openai default gpt-4.1-mini; local default: the embedded SmolLM2-135M-Instruct)."
)
@click.option(
    "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 for vLLM (or OPENAI_BASE_URL)."
)
@click.option("--concurrency", type=int, help="Requests in flight at once. Default 16.")
@click.option("--rpm", "requests_per_minute", type=int, help="Requests-per-minute limit.")
@click.option("--tpm", "tokens_per_minute", type=int, help="Tokens-per-minute limit.")
@click.option(
    "--templates",
    type=click.Path(path_type=Path),
    help="Folder with one subfolder per domain (adds or overrides domains).",
)
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="YAML file of settings (flags override it)."
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="Response cache (SQLite) to use, e.g. one shared across runs. Default: <out>/cache.sqlite.",
)
@click.option("--seed", type=int, help="Seed of the whole build. Default 0.")
@click.option(
    "--pair-mode",
    type=click.Choice(["auto", "joint", "separate"]),
    help="joint: one call writes both answers (they can share an opening); separate: one call each.",
)
@click.option(
    "--structured-output",
    type=click.Choice(["json_schema", "json_object", "none"]),
    help="How to ask an endpoint for JSON. Default json_schema; json_object or none for servers that reject it.",
)
@click.option(
    "--prices", type=click.Path(path_type=Path), help="YAML price table (USD per million tokens) to add or override."
)
@click.option(
    "--max-cost", type=float, help="Budget in USD for the run directory; stops cleanly (exit 3) before it is exceeded."
)
@click.option(
    "--max-failure-rate", type=float, help="Share of failed calls above which the build exits 1. Default 0.25."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    default=None,
    help="Ask again for answers that failed (malformed, refused) on an earlier run; by default they are reused.",
)
@click.option("--dry-run", is_flag=True, help="Print planned calls, tokens and cost; call and write nothing.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print a machine-readable summary (the manifest, or the plan) on stdout."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary on stderr.")
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
    if result.plan is not None:
        if as_json:
            click.echo(json.dumps(result.plan, indent=2))
        if not quiet or not as_json:
            print_plan(result.plan)
    elif as_json and result.manifest is not None:
        click.echo(result.manifest.model_dump_json(indent=2))
    if result.exit_code == 0:
        if not quiet:
            click.echo(f"dsgen: {result.message}", err=True)
    else:
        click.echo(f"dsgen: error: {result.message}", err=True)
    sys.exit(result.exit_code)


def main() -> None:
    cli(prog_name="dsgen")


if __name__ == "__main__":
    main()
