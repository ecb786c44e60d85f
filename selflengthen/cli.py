"""The `selflengthen` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from loguru import logger
from typer.core import TyperGroup

from selflengthen import __version__, interrupts
from selflengthen.cli_corpus import filter_command, sample_command
from selflengthen.cli_engine import with_engine_options
from selflengthen.cli_generation import extend_command, generate_command, self_instruct_command
from selflengthen.cli_steps import (
    build_sft_command,
    collect_command,
    length_control_command,
    train_command,
)
from selflengthen.config import load_config
from selflengthen.engine.models import DEFAULT_MODEL, EMBEDDED_MODELS, ResolvedModel, prepare_embedded_model
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.errors import SelflengthenError, describe_os_error
from selflengthen.loop import STEP_NAMES, parse_iterations, run_loop
from selflengthen.run_summary import summary_table


class _Commands(TyperGroup):
    """The command group: an interruption (SIGINT, SIGTERM, SIGHUP) that reaches it has unwound
    the command (servers stopped, checkpoints saved); it ends here, before click would turn it
    into "Aborted!" and a normal exit that waits for the step's worker threads."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except interrupts.Interrupted as error:
            _exit_interrupted(error)


def _exit_interrupted(error: BaseException) -> None:
    typer.echo("selflengthen: interrupted; rerun the same command to resume", err=True)
    interrupts.exit_now(interrupts.exit_status(error))


app = typer.Typer(
    cls=_Commands,
    name="selflengthen",
    help="Build long-output training data with the Self-Lengthen method.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False, "verbose": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"selflengthen {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show datatrove's and the engine's logs.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Build long-output training data with the Self-Lengthen method."""
    _state["debug"] = debug
    _state["verbose"] = verbose
    if not verbose:
        logger.disable("datatrove")


app.command("filter")(filter_command)
app.command("sample")(sample_command)


app.command("self-instruct")(self_instruct_command)
app.command("generate")(generate_command)
app.command("extend")(extend_command)
app.command("build-sft")(build_sft_command)
app.command("train")(train_command)
app.command("collect")(collect_command)
app.command("length-control")(length_control_command)


@app.command("run")
def run_command(
    config: Annotated[
        Path,
        typer.Option(
            "--config", help="The run config (e.g. recipes/smollm2-cpu/run.yaml).", show_default=False
        ),
    ],
    iterations: Annotated[
        str | None,
        typer.Option(help="Run only these iterations: K or A-B (default: 1..N from the config)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a config key, e.g. --set engine.data_parallel_size=8 (value read as YAML; "
            "repeatable).",
        ),
    ] = None,
    from_step: Annotated[
        str | None,
        typer.Option(
            help="Redo this step of the first selected iteration and everything after it "
            f"({', '.join(STEP_NAMES)}); earlier outputs are moved to <run>/.replaced/."
        ),
    ] = None,
) -> None:
    """Run the Self-Lengthen loop: iterations 1..N (self-instruct, generate, extend, build-sft,
    train), then collect and length-control, and write the run's report (report.html in the run
    folder; `selflengthen report`). Rerunning resumes; finished steps are skipped."""
    run_config = load_config(config, overrides)
    selected = parse_iterations(iterations, run_config.iterations)
    from selflengthen.train.preflight import preflight
    from selflengthen.train.sft import check_recipe  # imports TRL (seconds): after the quick checks

    preflight(run_config, check_recipe(run_config.train.recipe))
    summary = run_loop(run_config, selected, from_step, verbose=_state["verbose"])
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_width_chars=200):
        typer.echo(summary_table(summary))
    typer.echo(
        f"long: {summary['long_rows']} rows, final (length control): {summary['final_rows']} rows "
        f"-> {run_config.folder}"
    )
    from selflengthen.report import write_report

    typer.echo(f"report: {write_report(run_config.folder)}")


@app.command("eval")
@with_engine_options
def eval_command(
    out: Annotated[
        Path,
        typer.Option(help="The evaluation folder (results.json, results.md, plots/).", show_default=False),
    ],
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to evaluate on the same prompts, each SPEC or LABEL=SPEC (default: --model).",
            show_default=False,
        ),
    ] = None,
    prompts: Annotated[
        str,
        typer.Option(
            help="'builtin' (our 16 prompts, English and Chinese, all four types), a JSONL/CSV/parquet "
            "file, or a Hub dataset id such as quanshr/LonGen (downloaded only when named)."
        ),
    ] = "builtin",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    compare: Annotated[
        Path | None,
        typer.Option(
            help="A run folder: also evaluate its base model and each iteration's Generator (iter-K)."
        ),
    ] = None,
    responses: Annotated[
        list[Path] | None,
        typer.Option(
            help="Score existing responses (the prompt columns + 'response', optional 'model') instead of "
            "generating them (repeatable)."
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            help="Rate quality with this judge: a model spec we serve, or an OpenAI-compatible URL."
        ),
    ] = None,
    judge_model: Annotated[str, typer.Option(help="With a judge URL: the model name it serves.")] = "default",
    judge_api_key_env: Annotated[
        str | None, typer.Option(help="With a judge URL: the environment variable holding its API key.")
    ] = None,
    judge_retries: Annotated[
        int, typer.Option(min=1, help="Judge attempts per item before it counts as a failure.")
    ] = 3,
    judge_max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens of a judge reply.")] = 200,
    growth_prompts: Annotated[
        str,
        typer.Option(
            help="With --compare: the open-ended prompts (no length constraint) on which the length growth "
            "of each iteration's Generator is measured: 'heldout' (our 52 English writing prompts) or a "
            "JSONL/CSV/parquet file with a 'query' or 'prompt' column. Prompts the run has seen (a seed or "
            "an instruction, exactly or nearly) are left out and listed."
        ),
    ] = "heldout",
    growth_samples: Annotated[
        int,
        typer.Option(
            min=0, help="With --compare: answers per growth prompt and model (0: no growth evaluation)."
        ),
    ] = 2,
    relevance: Annotated[
        bool,
        typer.Option(
            help="With --compare: score each growth answer's relevance to its prompt, per third of the "
            "answer, "
            "on the base model (the ratio of the segment's perplexity with the prompt to without it; "
            "selflengthen.relevance), and report the first and last segments' mean ratio and the share of "
            "answers whose last segment is off topic."
        ),
    ] = False,
    *,
    engine: EngineOptions,
    model: ResolvedModel,
    sampling: SamplingOptions,
) -> None:
    """Length following (and, with --judge, quality) of one or more models on the same prompts."""
    from selflengthen.eval.cli_models import contenders_for, judge_for
    from selflengthen.eval.growth import growth_setup
    from selflengthen.eval.prompts import load_prompts
    from selflengthen.eval.report import growth_table, markdown_table
    from selflengthen.eval.run import evaluate

    table = load_prompts(prompts, limit)
    contenders = contenders_for(models or [], model, compare, bool(responses) or compare is not None)
    rater = judge_for(
        judge, judge_model, judge_api_key_env, judge_retries, judge_max_tokens, engine, sampling
    )
    growth = growth_setup(compare, growth_prompts, growth_samples) if compare and growth_samples else None
    if growth is not None and growth.excluded:
        typer.echo(
            f"left out {len(growth.excluded)} growth prompt(s) that the run has seen: "
            + ", ".join(overlap.prompt_id for overlap in growth.excluded),
            err=True,
        )
    if relevance and growth is None:
        raise SelflengthenError("--relevance: needs --compare RUN_DIR with --growth-samples > 0")
    results = evaluate(
        table, contenders, list(responses or []), out, engine, sampling, rater, growth, relevance
    )
    typer.echo(markdown_table(results["aggregates"]))
    if "growth" in results:
        typer.echo(growth_table(results["growth"]))
    typer.echo(f"-> {out / 'results.json'}, {out / 'results.md'}, {out / 'plots'}")


@app.command("publish")
def publish_command(
    run_dir: Annotated[Path, typer.Argument(help="The run folder (runs/<name>).", show_default=False)],
    repo: Annotated[
        str,
        typer.Option(
            help="The dataset repo, ORG/NAME (models go to ORG/NAME-generator and -extender).",
            show_default=False,
        ),
    ],
    iteration: Annotated[
        int | None, typer.Option(help="Publish this iteration only (refused if already published).")
    ] = None,
    all_iterations: Annotated[
        bool,
        typer.Option("--all", help="Publish every finished iteration not yet published (the default)."),
    ] = False,
    private: Annotated[bool, typer.Option("--private", help="Create the repos as private.")] = False,
    models: Annotated[
        bool,
        typer.Option(
            "--models", help="Also publish each iteration's Generator and Extender (LoRA adapters)."
        ),
    ] = False,
    merged: Annotated[
        bool, typer.Option("--merged", help="With --models: add the merged weights too.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Publish again an iteration whose files are on main without its tag (an interrupted "
            "publish); a tag is never moved.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write what would be uploaded into --out instead.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="With --dry-run: the folder standing in for the Hub (<out>/datasets/ORG/NAME/...)."
        ),
    ] = None,
    license_id: Annotated[
        str | None,
        typer.Option("--license", help="The license id for the cards (default: the base model's, if known)."),
    ] = None,
) -> None:
    """Publish a run's finished iterations as versions (tags iter-<k>) of a Hub dataset, with
    dataset cards; with --models, the trained roles as model repos with model cards."""
    from selflengthen.publish import PublishRequest, publish

    if iteration is not None and all_iterations:
        raise SelflengthenError("--iteration and --all: give one of them")
    if dry_run != (out is not None):
        raise SelflengthenError("--dry-run and --out go together (--dry-run --out DIR)")
    request = PublishRequest(
        run_dir, repo, iteration, private, models, merged, force, out if dry_run else None, license_id
    )
    versions = publish(request)
    typer.echo(f"published {len(versions)} version(s)" + (" (dry run)" if dry_run else ""))


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="The run folder (runs/<name>).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the page (default: RUN_DIR/report.html).")
    ] = None,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", min=0, help="Rows per iteration and kind (kept, not grown) in the sample browser."
        ),
    ] = 200,
) -> None:
    """Write one self-contained HTML page of a run (finished or not): each iteration's funnel and
    drop reasons, words per answer, growth, training loss, a browser of extended rows with what
    the Extender inserted highlighted, the evaluation's results and the config. No server, no
    network: open it in any browser or attach it to an issue."""
    from selflengthen.report import write_report

    typer.echo(write_report(run_dir, out, samples))


@app.command("prepare-model")
def prepare_model_command(
    name: Annotated[str, typer.Argument(help="The embedded model to convert.")] = DEFAULT_MODEL,
) -> None:
    """Convert the embedded default model (from PyPI) into a safetensors folder, once."""
    if name not in EMBEDDED_MODELS:
        raise SelflengthenError(
            f"{name!r} is not an embedded model (choose from {', '.join(EMBEDDED_MODELS)})"
        )
    typer.echo(prepare_embedded_model(name))


def main() -> None:
    """Entry point: run the app; report expected errors as one line and exit 2."""
    interrupts.install()
    try:
        app()
    except SelflengthenError as error:
        if _state["debug"]:
            raise
        typer.echo(f"selflengthen: error: {error}", err=True)
        sys.exit(2)
    except OSError as error:  # a file-system problem: the path and the problem, in one line
        if _state["debug"]:
            raise
        typer.echo(f"selflengthen: error: {describe_os_error(error)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as error:  # an interruption outside a command (e.g. while parsing)
        _exit_interrupted(error)


if __name__ == "__main__":
    main()
