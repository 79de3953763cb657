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
from tunelab.io import read_jsonl
from tunelab.progress import console
from tunelab.runs import RunDir


def check_same_recipe(run: RunDir, recipe: Recipe) -> None:
    from tunelab.train.run import training_fingerprint

    if not run.recipe.is_file():
        return
    old = recipe_from_dict(yaml.safe_load(run.recipe.read_text()), str(run.recipe))
    if training_fingerprint(old) != training_fingerprint(recipe):
        raise TunelabError(f"{run.root} was started with a different recipe (model, data or training settings changed); "
                           f"pass --restart to start over, or give the run another name")


def run_pipeline(recipe_path: Path, overrides: list[str] | None = None, restart: bool = False) -> Path:
    from tunelab.train.run import last_complete_checkpoint, train_recipe

    recipe = load_recipe(recipe_path, overrides)
    run = RunDir(recipe.run_dir())
    if restart and run.root.exists():
        console.print(f"--restart: removing {run.root}")
        shutil.rmtree(run.root)
    check_same_recipe(run, recipe)
    done = [s for s in ("data", "train", "eval", "export", "report") if run.stage_done(s)]
    if done:
        console.print(f"resuming {run.root}: already done: {', '.join(done)}")

    console.rule("[bold]1-2. data and training")
    if not run.stage_done("train"):
        resume = last_complete_checkpoint(run.checkpoints) is not None
        train_recipe(recipe, resume=resume)

    console.rule("[bold]3. evaluation: base against tuned")
    if not run.stage_done("eval"):
        from tunelab.evaluate.run import evaluate_models

        examples = read_jsonl(run.split("test"))
        if not examples:
            raise TunelabError(f"{run.split('test')} is empty: set data.test_fraction or data.eval_source to evaluate")
        models, names = ([recipe.model, str(run.root)], ["base", "tuned"]) if recipe.eval.compare_base else ([str(run.root)], ["tuned"])
        result = evaluate_models(models, examples, recipe.eval, run.eval, names=names, source=str(run.split("test")))
        from tunelab.evaluate import report as eval_report

        console.print(eval_report.rich_table(result))
        run.mark_done("eval", n_examples=result["n_examples"])

    console.rule("[bold]4. export")
    if recipe.export.formats and not run.stage_done("export"):
        from tunelab.export.run import export_run

        report = export_run(run.root, list(recipe.export.formats), config=recipe.export, eval_config=recipe.eval)
        if not report["passed"]:
            console.print(f"[red]faithfulness check failed[/] for some formats: see {run.export / 'faithfulness.md'}")
        run.mark_done("export", passed=report["passed"], formats=list(report["formats"]))

    console.rule("[bold]5. report")
    from tunelab.report import write_report

    md, html = write_report(run)
    run.mark_done("report")
    serve_target = next(iter(sorted((run.export / "gguf").glob("*.gguf"))), None) if (run.export / "gguf").is_dir() else None
    console.print(f"\n[bold green]Done.[/] Report: {html} (and {md.name})")
    console.print(f"Chat with the tuned model:  tunelab serve {run.root}" + (f"   (fast CPU path: tunelab serve {serve_target})" if serve_target else ""))
    console.print(f"One-off answer:             tunelab generate {run.root} \"Who are you?\"")
    return run.root
