"""`tunelab run`: prepare → train → evaluate (base vs tuned) → export → report, resumable.

Each stage records completion in the run's state.json; running the same recipe again skips
finished stages and resumes training from its last checkpoint. A recipe that changed what
training computes is refused unless `--restart` is given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tunelab.config import Recipe, load_recipe, recipe_from_dict
from tunelab.errors import TunelabError
from tunelab.evaluate import report as eval_report
from tunelab.evaluate.benchmark import benchmark_name, benchmark_path, forgetting_verdict, rich_table, run_general_ability
from tunelab.evaluate.code import benchmark_name as code_benchmark_name
from tunelab.evaluate.code import rich_table as code_table
from tunelab.evaluate.code import run_code_benchmark, training_texts
from tunelab.evaluate.preference import preference_stage
from tunelab.evaluate.run import evaluate_models
from tunelab.export.run import export_run
from tunelab.io import read_jsonl
from tunelab.progress import console, print_table
from tunelab.report import write_report
from tunelab.runs import RunDir
from tunelab.train.run import last_complete_checkpoint, train_recipe, training_fingerprint


def check_same_recipe(run: RunDir, recipe: Recipe) -> None:
    if not run.recipe.is_file():
        return
    old = recipe_from_dict(yaml.safe_load(run.recipe.read_text()), str(run.recipe))
    if training_fingerprint(old) != training_fingerprint(recipe):
        raise TunelabError(
            f"{run.root} was started with a different recipe (model, data or training settings changed); "
            f"pass --restart to start over, or give the run another name"
        )


def general_ability(recipe: Recipe, run: RunDir) -> None:
    """The forgetting check: a multiple-choice benchmark (ARC-Easy by default), base against tuned."""
    cfg = recipe.eval.general_ability
    try:
        benchmark_path(cfg.benchmark)
    except TunelabError as err:  # no shared data here: the run goes on without the check, and says so
        console.print(f"[yellow]general-ability check skipped:[/] {err}")
        run.mark_done("general", skipped=str(err))
        return
    name = benchmark_name(cfg.benchmark)
    result = run_general_ability([recipe.model, str(run.root)], ["base", "tuned"], cfg, run.benchmark(name))
    print_table(rich_table(result))
    verdict = forgetting_verdict(result)
    console.print(verdict.replace("**", ""))
    run.mark_done("general", benchmark=name, verdict=verdict)


def code_stage(recipe: Recipe, run: RunDir) -> None:
    """pass@k of base and tuned on the code benchmark, by running their code (after export: the fast path uses the Q8_0 GGUF)."""
    cfg = recipe.eval.code
    models, names = ([recipe.model, str(run.root)], ["base", "tuned"]) if recipe.eval.compare_base else ([str(run.root)], ["tuned"])
    out = run.benchmark(code_benchmark_name(cfg.benchmark))
    result = run_code_benchmark(
        models, cfg, out, names=names, bootstrap_samples=recipe.eval.bootstrap_samples, training={str(run.root): training_texts(run)}
    )
    print_table(code_table(result))
    run.mark_done("code", benchmark=result["benchmark"])


def run_pipeline(recipe_path: Path, overrides: list[str] | None = None, restart: bool = False) -> Path:
    recipe = load_recipe(recipe_path, overrides)
    run = RunDir(recipe.run_dir())
    if restart and run.root.exists():
        console.print(f"--restart: removing {run.root}")
        shutil.rmtree(run.root)
    check_same_recipe(run, recipe)
    done = [s for s in ("data", "train", "eval", "preference", "general", "export", "code", "report") if run.stage_done(s)]
    if done:
        console.print(f"resuming {run.root}: already done: {', '.join(done)}")

    console.rule("[bold]1-2. data and training")
    if not run.stage_done("train"):
        resume = last_complete_checkpoint(run.checkpoints) is not None
        train_recipe(recipe, resume=resume)

    console.rule("[bold]3. evaluation: base against tuned")
    if not run.stage_done("eval"):
        examples = read_jsonl(run.split("test"))
        if not examples:
            raise TunelabError(f"{run.split('test')} is empty: set data.test_fraction or data.eval_source to evaluate")
        models, names = ([recipe.model, str(run.root)], ["base", "tuned"]) if recipe.eval.compare_base else ([str(run.root)], ["tuned"])
        result = evaluate_models(models, examples, recipe.eval.for_held_out(), run.eval, names=names, source=str(run.split("test")))
        print_table(eval_report.rich_table(result))
        run.mark_done("eval", n_examples=result["n_examples"])

    if recipe.eval.compare_base and not run.stage_done("preference"):  # the test split holds preference pairs (evaluate/preference.py)
        result = preference_stage(recipe, run)
        run.mark_done("preference", n_pairs=result["n_examples"] if result else 0)

    if recipe.eval.general_ability is not None and recipe.eval.compare_base and not run.stage_done("general"):
        console.rule("[bold]3b. general ability: did fine-tuning keep it?")
        general_ability(recipe, run)

    console.rule("[bold]4. export")
    if recipe.export.formats and not run.stage_done("export"):
        report = export_run(run.root, list(recipe.export.formats), config=recipe.export, eval_config=recipe.eval)
        if not report["passed"]:
            console.print(f"[red]faithfulness check failed[/] for some formats: see {run.export_dir.faithfulness_md}")
        run.mark_done("export", passed=report["passed"], formats=list(report["formats"]))

    if recipe.eval.task == "code" and not run.stage_done("code"):
        console.rule("[bold]4a. code: does the tuned model's code pass more tests?")
        code_stage(recipe, run)

    console.rule("[bold]5. report")
    md, html = write_report(run)
    run.mark_done("report")
    lora = run.export_dir.lora
    serve_target = next(iter(run.export_dir.gguf_files()), lora if lora.is_dir() else None)
    console.print(f"\n[bold green]Done.[/] Report: {html} (and {md.name})")
    console.print(
        f"Chat with the tuned model:  tunelab serve {run.root}"
        + (f"   (fast CPU path: tunelab serve {serve_target})" if serve_target else "")
    )
    console.print(f'One-off answer:             tunelab generate {run.root} "Who are you?"')
    return run.root
