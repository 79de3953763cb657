"""`tunelab sweep`: run every variant of a sweep (prepare → train → evaluate) into one results store.

Order of work, so that no variant can see the test data and errors surface before any training:
1. Fix the held-out set once (carved out of a training source, or a separate file) and keep it,
   with its content hash, in `<sweep>/heldout/`; the store remembers the hash and refuses a
   changed one later.
2. Prepare every variant's data (its own data card and hash) and refuse any variant whose
   training data overlaps the held-out set (content hashes).
3. Evaluate each distinct base model once (the reference row), then train and evaluate each
   variant × seed on the identical held-out examples, storing per-example scores; with the
   recipe's `eval.general_ability` set, every row is also scored on that benchmark sample, per
   question, so `tunelab compare` can weigh each variant's task gain against its general ability.
Finished runs are skipped; a run stopped half-way resumes from its last checkpoint. A variant that
differs from a trained one only in what training does not compute (`train.interpolation`, applied when
the model loads; `export.*`; `eval.*`) reuses its training, so a sweep over α or over GGUF formats costs
one training.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from tunelab.compare.spec import (
    ServingSpec,
    Sweep,
    Variant,
    hash_obj,
    load_sweep,
    recipe_changes,
    resolved_dict,
    without_added_later,
)
from tunelab.compare.store import ResultsStore, store_path
from tunelab.compare.wording import change_phrase
from tunelab.config import (
    GGUF_LORA,
    LORA_BASE_QUANT,
    MERGED_GGUF_FORMATS,
    DataSource,
    EvalConfig,
    GeneralAbilityConfig,
    Recipe,
    recipe_from_dict,
    write_recipe,
)
from tunelab.cpu import cpu, wait_until_idle
from tunelab.data.loaders import load_examples
from tunelab.data.prepare import prepare_data
from tunelab.data.schema import content_hash, split_hash
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.evaluate.benchmark import benchmark_name, benchmark_path, question_scores, run_general_ability
from tunelab.evaluate.code import benchmark_name as code_benchmark_name
from tunelab.evaluate.code import problem_scores, run_code_benchmark, training_texts
from tunelab.evaluate.examples import split_example
from tunelab.evaluate.generation import run_gguf
from tunelab.evaluate.metric_facts import benchmark_metric
from tunelab.evaluate.preference import evaluate_preferences, has_pairs, store_rows
from tunelab.evaluate.run import evaluate_models
from tunelab.export.llama_cpp import base_model_gguf
from tunelab.export.run import export_run
from tunelab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, read_jsonl
from tunelab.models import resolve_model
from tunelab.models.llama_cpp import lora_pair
from tunelab.models.load import set_threads
from tunelab.progress import console, print_table, progress_bar
from tunelab.runs import DEFAULT_RUNS_DIR, EvalDir, RunDir, now, read_model_info, write_model_info
from tunelab.serve.cost import serving_cost
from tunelab.train.run import train_recipe, training_fingerprint

# the general-ability metric weighed against the task gain: lm-evaluation-harness's acc, as the forgetting verdict reports it
GENERAL_METRIC = "acc"


@dataclass
class Heldout:
    path: Path  # <sweep>/heldout/test.jsonl, the only file any variant is scored on
    examples: list[dict]
    hashes: set[str]
    split_hash: str
    carved_from: str | None  # path of the source the set was carved from (None: a separate file)
    remainder: Path | None  # that source without the held-out examples, in the message schema


@dataclass
class PlannedRun:
    run_id: str
    variant: Variant | None  # None for a reference row (an untuned base model)
    seed: int | None
    recipe: Recipe | None
    run_dir: Path
    model_ref: str  # what is evaluated: the run directory, or the base model


# ---------------------------------------------------------------- held-out set
def fix_heldout(sweep: Sweep, store: ResultsStore) -> Heldout:
    """Create the sweep's held-out set once; afterwards reload it and check it is unchanged."""
    folder = sweep.folder / "heldout"
    test_path, remainder_path = folder / "test.jsonl", folder / "train-source.jsonl"
    spec = sweep.spec.heldout
    base = sweep.baseline.recipe
    carved_source = (
        None
        if spec.path
        else base.data.sources[spec.from_source].model_dump(
            mode="json", include={"path", "format", "columns", "placeholders", "split", "system_prompt", "template"}
        )
    )
    spec_hash = hash_obj({"heldout": spec.model_dump(mode="json"), "carved_from": carved_source})[:16]
    stored_spec = store.get_meta("heldout_spec")
    if stored_spec is not None and stored_spec != spec_hash:
        raise ConfigError(
            f"{sweep.file}: the held-out set of sweep '{sweep.name}' was fixed by an earlier run (store {store.path}) "
            "and the `heldout:` settings or the source it is carved from have changed since; results would no longer be "
            "comparable. Give the sweep a new `name:` or remove its folder to start over."
        )
    carved_from = None if spec.path else base.data.sources[spec.from_source].path

    if not test_path.is_file():
        if spec.path:
            source = DataSource(
                path=_resolve_near(spec.path, sweep.file), format=spec.format, placeholders=spec.placeholders, template=spec.template
            )
            examples = load_examples(source)
            if spec.max_examples and spec.max_examples < len(examples):
                examples = random.Random(spec.seed).sample(examples, spec.max_examples)
            remainder = None
        else:
            source = base.data.sources[spec.from_source]
            everything = load_examples(source)
            if spec.size >= len(everything):
                raise ConfigError(
                    f"{sweep.file}: heldout.size {spec.size} leaves no training data in {source.path} ({len(everything)} examples)"
                )
            picked = set(random.Random(spec.seed).sample(range(len(everything)), spec.size))
            examples = [e for i, e in enumerate(everything) if i in picked]
            # Anything equal in content to a held-out example leaves the training source too.
            held = {content_hash(e) for e in examples}
            remainder = [e for e in everything if content_hash(e) not in held]
        _unique_ids(examples, test_path)
        if remainder is not None:
            atomic_write_jsonl(remainder_path, remainder)
        atomic_write_jsonl(test_path, examples)
        console.print(
            f"[green]held-out set fixed:[/] {test_path} ({len(examples)} examples"
            + (f", carved out of {Path(carved_from).name}" if carved_from else "")
            + ")"
        )
    examples = read_jsonl(test_path)
    digest = split_hash(examples)
    stored = store.get_meta("heldout_hash")
    if stored is not None and stored != digest:
        raise DataError(
            str(test_path),
            None,
            None,
            f"the held-out set changed since the sweep started (hash {digest[:12]} ≠ stored {stored[:12]}); results would not be comparable",
        )
    store.set_meta("heldout_hash", digest)
    store.set_meta("heldout_spec", spec_hash)
    store.set_meta("heldout_size", str(len(examples)))
    return Heldout(
        path=test_path,
        examples=examples,
        hashes={content_hash(e) for e in examples},
        split_hash=digest,
        carved_from=carved_from,
        remainder=remainder_path if carved_from else None,
    )


def _resolve_near(path: str, sweep_file: Path) -> str:
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (sweep_file.parent / p).exists():
        return str((sweep_file.parent / p).resolve())
    return path


def _unique_ids(examples: list[dict], file: Path) -> None:
    seen: set[str] = set()
    for i, e in enumerate(examples):
        if e["id"] in seen:
            raise DataError(str(file), i, "id", f"duplicate example id {e['id']!r}")
        seen.add(e["id"])


# ---------------------------------------------------------------- planning
def variant_recipe(sweep: Sweep, variant: Variant, seed: int, heldout: Heldout) -> Recipe:
    """The variant's recipe placed in the sweep: its own run dir, the fixed held-out set, the seed."""
    raw = resolved_dict(variant.recipe)
    raw["name"] = f"{variant.name}-s{seed}-{variant.config_id[:6]}"
    raw["output_dir"] = str(sweep.folder / DEFAULT_RUNS_DIR)  # a sweep's runs sit in its folder, under the usual name
    raw["train"]["seed"] = seed
    raw["data"]["eval_source"] = {"path": str(heldout.path.resolve()), "format": "messages"}
    if heldout.carved_from is not None:
        carved = Path(heldout.carved_from).resolve()
        for src in raw["data"]["sources"]:
            if Path(src["path"]).resolve() == carved:
                # The same examples, already in the message schema, minus the held-out ones.
                src.update(path=str(heldout.remainder.resolve()), format="messages", columns={}, placeholders={}, template=None)
                src["system_prompt"] = None  # already applied when the source was carved
    return recipe_from_dict(raw, f"{sweep.file}: variant '{variant.name}'")


def plan_runs(sweep: Sweep, heldout: Heldout) -> list[PlannedRun]:
    planned: list[PlannedRun] = []
    models = []
    for v in sweep.variants:
        if v.recipe.model not in models:
            models.append(v.recipe.model)
    eval_settings = without_added_later(eval_config(sweep, heldout).model_dump(mode="json"), ("eval",))
    for model in models:
        # The same model scored with other evaluation settings is another reference run.
        run_id = "base-" + hash_obj([model, eval_settings])[:10]
        planned.append(PlannedRun(run_id, None, None, None, sweep.folder / "reference" / run_id, model))
    for v in sweep.variants:
        for seed in sweep.seeds:
            recipe = variant_recipe(sweep, v, seed, heldout)
            planned.append(PlannedRun(f"{v.config_id}-s{seed}", v, seed, recipe, recipe.run_dir(), str(recipe.run_dir())))
    return planned


def register(store: ResultsStore, sweep: Sweep, run: PlannedRun) -> None:
    """Record a planned run in the store (name, settings, kind) without touching its status."""
    if run.variant is None:
        store.upsert_run(
            run.run_id,
            variant=f"base model ({Path(run.model_ref).name})",
            kind="reference",
            settings={"model": run.model_ref},
            run_dir=str(run.run_dir),
        )
        return
    changes = recipe_changes(sweep.baseline.recipe, run.variant.recipe)
    store.upsert_run(
        run.run_id,
        variant=run.variant.name,
        seed=run.seed,
        config_id=run.variant.config_id,
        kind="variant",
        settings={
            "set": run.variant.settings,
            "changes": {k: list(v) for k, v in changes.items()},
            "kinds": sorted(run.variant.kinds),
            "baseline": run.variant is sweep.baseline,
        },
        recipe=run.recipe.model_dump(mode="json"),
        run_dir=str(run.run_dir),
    )


# ---------------------------------------------------------------- data
def prepare_variant_data(run: PlannedRun, heldout: Heldout, store: ResultsStore, prepared: dict[str, Path]) -> None:
    """Prepare the run's data (its own card and hash) unless done; refuse any overlap with the held-out set."""
    recipe = run.recipe
    rd = RunDir(run.run_dir)
    key = hash_obj([recipe.data.model_dump(mode="json"), recipe.model, recipe.train.max_seq_length])
    if not rd.stage_done("data"):
        if key in prepared and RunDir(prepared[key]).stage_done("data"):
            # Same data settings (another seed, or a model-centric variant): reuse the prepared folder.
            with atomic_dir(rd.data) as tmp:
                shutil.copytree(RunDir(prepared[key]).data, tmp, dirs_exist_ok=True)
            card = json.loads(rd.data_card.read_text())
        else:
            console.print(f"preparing data for [bold]{recipe.name}[/]")
            card = prepare_data(recipe.data, rd.data, model_ref=recipe.model, max_seq_length=recipe.train.max_seq_length)
        check_overlap(run, card, heldout)
        # train_recipe skips its own preparation when the run's state says the data stage is done.
        rd.mark_done("data", counts=card.get("counts"), hash=card.get("hashes", {}).get("all"))
    else:
        card = json.loads(rd.data_card.read_text())
        check_overlap(run, card, heldout)
    prepared.setdefault(key, rd.root)
    store.upsert_run(run.run_id, data_hash=str(card.get("hashes", {}).get("train") or hash_obj(card))[:16])


def check_overlap(run: PlannedRun, card: dict, heldout: Heldout) -> None:
    """Refuse a variant whose training sources contain held-out examples (by content hash).

    The data stage drops such examples from training ("overlaps_test"); a sweep refuses them
    instead, because the variant would silently train on different data than its recipe says.
    """
    rd = RunDir(run.run_dir)
    leaked = (card.get("drops") or {}).get("overlaps_test")
    if leaked and leaked.get("count"):
        raise DataError(
            ", ".join(s.path for s in run.recipe.data.sources),
            None,
            None,
            f"variant '{run.variant.name}': {leaked['count']} training example(s) are also in the held-out set {heldout.path} "
            f"(same content hash; e.g. {', '.join(map(str, leaked.get('examples', [])[:3]))}). A model must never train on its "
            "test data: remove them from the training sources, or let the sweep carve the held-out set out of a source "
            "(`heldout: {from_source: N, size: K}`)",
        )
    for split in ("train", "validation"):
        path = rd.split(split)
        if not path.is_file():
            continue
        for i, example in enumerate(read_jsonl(path)):
            if content_hash(example) in heldout.hashes:
                raise DataError(
                    str(path),
                    i,
                    "messages",
                    f"variant '{run.variant.name}': this {split} example is also in the held-out set {heldout.path} "
                    f"(same content hash, source {example.get('source')}); a model must never train on its test data",
                )


# ---------------------------------------------------------------- train + evaluate
def train_done(run_dir: Path) -> bool:
    rd = RunDir(run_dir)
    return rd.train_summary.is_file() and rd.has_model()


def training_key(recipe: Recipe) -> str:
    """What training computes, without the interpolation (applied when the model loads): equal keys, equal training."""
    fingerprint = training_fingerprint(recipe)
    fingerprint["train"].pop("interpolation")
    return hash_obj(fingerprint)


def trained_twin(run: PlannedRun, planned: list[PlannedRun]) -> PlannedRun | None:
    """A trained run of this sweep whose training is this run's (it may differ in train.interpolation, export or eval)."""
    key = training_key(run.recipe)
    for other in planned:
        if other.recipe is not None and other is not run and train_done(other.run_dir) and training_key(other.recipe) == key:
            return other
    return None


def reuse_training(twin: PlannedRun, run: PlannedRun) -> None:
    """Give `run` its twin's trained weights and training record; its own interpolation is written into its model
    info, which every loader applies (models/interpolate.py). The summary is written last: it marks training done."""
    source, rd = RunDir(twin.run_dir), RunDir(run.run_dir)
    console.print(
        f"[bold]{run.recipe.name}[/]: reusing the training of {twin.recipe.name} (training is the same: they differ in train.interpolation, export or eval)"
    )
    with atomic_dir(rd.model) as tmp:
        shutil.copytree(source.model, tmp, dirs_exist_ok=True)
        info = read_model_info(tmp)
        info.update(interpolation=run.recipe.train.interpolation, run=rd.root.name, recipe=run.recipe.model_dump(mode="json"))
        write_model_info(tmp, info)
    write_recipe(rd, run.recipe)
    for name in (source.metrics, source.loss_plot):
        if name.is_file():
            rd.train.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, rd.train / name.name)
    summary = {**json.loads(source.train_summary.read_text()), "run": rd.root.name, "training_of": str(source.root)}
    atomic_write_json(rd.train_summary, summary)
    rd.mark_done("train", steps=summary.get("steps"), reused=str(source.root))


def train_run(run: PlannedRun, store: ResultsStore, planned: list[PlannedRun]) -> None:
    rd = RunDir(run.run_dir)
    twin = None if train_done(run.run_dir) else trained_twin(run, planned)
    if twin is not None:
        reuse_training(twin, run)
    elif not train_done(run.run_dir):
        # A run that started before resumes from its last checkpoint (train_recipe checks the recipe matches).
        resume = rd.checkpoints.is_dir() and any(rd.checkpoints.glob("checkpoint-*"))
        if resume:
            console.print(f"resuming [bold]{run.recipe.name}[/] from its last checkpoint")
        train_recipe(run.recipe, resume=resume or rd.has_model())
    summary = json.loads(rd.train_summary.read_text())
    store.set_status(run.run_id, "trained", train_seconds=summary.get("train_seconds"), tokens_per_second=summary.get("tokens_per_second"))


def eval_config(sweep: Sweep, heldout: Heldout):
    """Every run is scored with the base recipe's evaluation settings on every held-out example."""
    return sweep.baseline.recipe.eval.model_copy(update={"max_examples": None, "compare_base": False})


def general_ability_of(sweep: Sweep) -> GeneralAbilityConfig | None:
    """The recipe's general-ability check, which every row of the sweep gets; None, said once, where its benchmark is missing."""
    cfg = sweep.baseline.recipe.eval.general_ability
    if cfg is None:
        return None
    try:
        benchmark_path(cfg.benchmark)
    except TunelabError as err:
        console.print(f"[yellow]general-ability check skipped in this sweep:[/] {err}")
        return None
    return cfg


def general_ability_scores(run: PlannedRun, name: str, cfg: GeneralAbilityConfig) -> tuple[dict[str, dict], list[tuple[str, str, float]]]:
    """One row's score on the general-ability sample, per question, under keys like `arc-easy.acc` (metric_facts)."""
    bench = benchmark_name(cfg.benchmark)
    out = RunDir(run.run_dir).benchmark(bench)
    result = run_general_ability([run.model_ref], [name], cfg, out)
    metrics, scores = {}, []
    for metric, by_question in question_scores(out, name).items():
        key = benchmark_metric(bench, metric)
        block = result["models"][name][metric]
        metrics[key] = {"mean": block["mean"], "low": block["low"], "high": block["high"], "n": block["n"]}
        scores += [(question, key, value) for question, value in by_question.items()]
    return metrics, scores


def evaluate_run(run: PlannedRun, sweep: Sweep, heldout: Heldout, store: ResultsStore, general: GeneralAbilityConfig | None) -> None:
    out = RunDir(run.run_dir).eval
    start = time.perf_counter()
    name = run.variant.name if run.variant else "base"
    cfg = eval_config(sweep, heldout)
    if run.variant is not None and sweep.spec.serving is not None:
        export_for_serving(run)
    if run.variant is not None and cfg.generation_backend == "gguf" and run_gguf(run.run_dir) is None:
        export_q8_0(run)  # the held-out answers come from the run's GGUF: any it has (a gguf-lora pair too), else Q8_0
    result = evaluate_models([answering_model(run, cfg)], heldout.examples, cfg.for_held_out(), out, names=[name])
    metrics, scores = collect_scores(result, out, name)
    if cfg.task == "code":
        code_metrics, code_scores = evaluate_code(run, cfg, name)
        metrics, scores = {**metrics, **code_metrics}, scores + code_scores
    if has_pairs(heldout.examples):  # preference pairs: held-out preference accuracy too (evaluate/preference.py)
        pref_out = RunDir(run.run_dir).preference_eval
        pref = evaluate_preferences(
            [run.model_ref],
            [name],
            heldout.examples,
            pref_out,
            source=str(heldout.path),
            batch_size=cfg.batch_size,
            bootstrap_samples=cfg.bootstrap_samples,
        )
        pref_metrics, pref_scores = store_rows(pref, name, pref_out)
        metrics, scores = {**metrics, **pref_metrics}, scores + pref_scores
    if general is not None:
        general_metrics, general_scores = general_ability_scores(run, name, general)
        metrics, scores = {**metrics, **general_metrics}, scores + general_scores
    seconds = time.perf_counter() - start
    store.save_results(run.run_id, metrics, scores)
    store.set_status(run.run_id, "done", eval_seconds=seconds, error=None)


def answering_model(run: PlannedRun, cfg: EvalConfig) -> str:
    """What answers the held-out prompts: the run (its own GGUF with `eval.generation_backend: gguf`), or for a
    reference row the untuned base model, which with the GGUF backend answers from its Q8_0 GGUF (converted once
    and cached, as the code benchmark and gguf-lora do) since it has no export of its own."""
    if run.variant is None and cfg.generation_backend == "gguf":
        return str(base_model_gguf(resolve_model(run.model_ref).path, LORA_BASE_QUANT))
    return run.model_ref


def export_q8_0(run: PlannedRun) -> None:
    """The variant's Q8_0 GGUF, where it has none yet; written without the faithfulness check (Q8_0's is
    bench/export_quality.py's), before anything generates from it."""
    if "q8_0" not in RunDir(run.run_dir).export_dir.ggufs_by_quant():
        export_run(run.run_dir, ["gguf-q8_0"], check=False)


def evaluate_code(run: PlannedRun, cfg: EvalConfig, name: str) -> tuple[dict[str, dict], list[tuple[str, str, float]]]:
    """pass@1 on the code benchmark, by running the code, over every problem and each declared half."""
    rd = RunDir(run.run_dir)
    if run.variant is not None and cfg.code.backend == "gguf":
        export_q8_0(run)  # the code benchmark's fast path generates from a Q8_0 file for every model alike
    out = rd.benchmark(code_benchmark_name(cfg.code.benchmark))
    training = {run.model_ref: training_texts(rd)} if run.variant is not None else None  # checked for the problems, as `tunelab run` does
    run_code_benchmark([run.model_ref], cfg.code, out, names=[name], bootstrap_samples=cfg.bootstrap_samples, training=training)
    return problem_scores(out, name, cfg.bootstrap_samples)


def collect_scores(result: dict, out: Path, name: str) -> tuple[dict[str, dict], list[tuple[str, str, float]]]:
    """Metric means/intervals and per-example scores of one model from an evaluation's outputs."""
    model_block = result["models"][name]
    metrics = {}
    for metric, m in model_block["metrics"].items():
        if metric in ("bertscore_precision", "bertscore_recall") or m.get("mean") is None:
            continue  # BERTScore F1 is the one compared; metrics the backend could not compute are left out
        metrics[metric] = {"mean": m.get("mean"), "low": m.get("low"), "high": m.get("high"), "n": m.get("n")}
    scores = []
    for row in read_jsonl(EvalDir(out).predictions):
        for metric, value in row["scores"][name].items():
            if metric in metrics and isinstance(value, (int, float)) and math.isfinite(value):
                scores.append((str(row["id"]), metric, float(value)))
    return metrics, scores


# ---------------------------------------------------------------- what each variant costs to serve
def export_for_serving(run: PlannedRun) -> None:
    """Write the GGUF formats of the variant's recipe, merged files and the gguf-lora pair (with its export
    settings and faithfulness check), once."""
    rd = RunDir(run.run_dir)
    have = rd.export_dir.ggufs_by_quant()
    missing = [f for f in run.recipe.export.formats if f in MERGED_GGUF_FORMATS and f.removeprefix("gguf-") not in have]
    if GGUF_LORA in run.recipe.export.formats and lora_pair(rd.export_dir.lora) is None:
        missing.append(GGUF_LORA)
    if missing:
        export_run(run.run_dir, missing)


def serving_prompts(heldout: Heldout, n: int) -> list[list[dict]]:
    """The first `n` held-out examples as the model is asked them (every message before the reference answer)."""
    return [split_example(ex, i, str(heldout.path))["prompt"] for i, ex in enumerate(heldout.examples[:n])]


def measure_serving_all(runs: list[PlannedRun], spec: ServingSpec, heldout: Heldout, store: ResultsStore) -> None:
    """Time each finished variant's GGUF (the one `eval.generation_backend: gguf` scores), one at a time on an idle
    machine; a GGUF measured before is not measured again, and one the machine was too busy for waits for the next sweep."""
    todo = []
    for r in runs:
        gguf = run_gguf(r.run_dir) if r.variant is not None and (store.get_run(r.run_id) or {}).get("status") == "done" else None
        if gguf is not None and (store.serving(r.run_id) or {}).get("file") != str(gguf):
            todo.append((r, gguf))
    prompts = serving_prompts(heldout, spec.prompts)
    for i, (r, gguf) in enumerate(todo):
        load, busy = wait_until_idle(wait_s=spec.wait_idle_s)
        if busy:  # still busy after the wait: the others would wait as long for the same answer
            names = ", ".join(t.recipe.name for t, _ in todo[i:])
            console.print(
                f"[yellow]serving cost of {names} not measured:[/] the 1-minute load average is {load[0]:.2f} "
                f"(other work would be timed too); `tunelab sweep` again on an idle machine measures it"
            )
            return
        console.print(f"timing [bold]{r.recipe.name}[/]'s {gguf.name} at batch 1 ({len(prompts)} prompts, up to {spec.tokens} tokens each)")
        model, adapter = lora_pair(gguf) if gguf.is_dir() else (gguf, None)  # a gguf-lora folder: its base with the adapter
        cost = serving_cost(model, prompts, lora=adapter, tokens=spec.tokens, threads=r.recipe.train.threads)
        store.save_serving(
            r.run_id,
            {
                "file": str(gguf),
                "bytes": cost["bytes"],
                "ttft_seconds": cost["ttft_seconds"],
                "tokens_per_second": cost["tokens_per_second"],
                "peak_rss_mib": cost["peak_rss_mib"],
                "threads": cost["threads"],
                "cpu": cpu().label,
                "load_before": cost["load_average"]["before"],
                "load_after": cost["load_average"]["after"],
                "measured": now(),
            },
        )


# ---------------------------------------------------------------- the sweep
def select_shard(runs: list[PlannedRun], shard: str | None) -> list[PlannedRun]:
    """`--shard i/n`: this worker's share of the runs (every n-th, starting at i)."""
    if not shard:
        return runs
    error = ConfigError(f"--shard '{shard}' must look like INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4")
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError:
        raise error from None
    if not (count > 0 and 0 <= index < count):
        raise error
    return [r for i, r in enumerate(runs) if i % count == index]


def run_sweep(sweep: Sweep, shard: str | None = None, only: list[str] | None = None) -> dict:
    """Run (or resume) a sweep. Returns {"done": n, "skipped": n, "failed": [names]}."""
    folder = sweep.folder
    folder.mkdir(parents=True, exist_ok=True)
    with ResultsStore(store_path(folder)) as store:
        store.set_meta("sweep_name", sweep.name)
        store.set_meta("sweep_file", str(sweep.file.resolve()))
        store.set_meta("baseline", sweep.baseline.name)
        store.set_meta("seeds", ",".join(map(str, sweep.seeds)))
        store.set_meta("task_metric", sweep.task_metric)
        heldout = fix_heldout(sweep, store)
        general = general_ability_of(sweep)
        if general is not None:
            store.set_meta("general_metric", benchmark_metric(benchmark_name(general.benchmark), GENERAL_METRIC))
        planned = plan_runs(sweep, heldout)
        runs = select_shard(select_only(planned, sweep, only), shard)
        for r in runs:
            register(store, sweep, r)
        todo = [r for r in runs if (store.get_run(r.run_id) or {}).get("status") != "done"]
        skipped = len(runs) - len(todo)
        done, failed = 0, []
        if not todo:
            console.print(f"[green]sweep '{sweep.name}': all {len(runs)} runs already in the store[/] ({store.path})")
        else:
            if skipped:
                console.print(f"sweep '{sweep.name}': {skipped} finished runs skipped, {len(todo)} to do")
            set_threads(sweep.baseline.recipe.train.threads)
            prepare_all(todo, heldout, store)  # every variant's data, and the overlap check, before any training
            done, failed = train_and_evaluate_all(todo, sweep, heldout, store, planned, general)
            write_sweep_summary(sweep, heldout)
        if sweep.spec.serving is not None:
            store.set_meta("serving", json.dumps(sweep.spec.serving.model_dump()))  # `tunelab compare` shows the section
            measure_serving_all(runs, sweep.spec.serving, heldout, store)
        return {"done": done, "skipped": skipped, "failed": failed}


def select_only(runs: list[PlannedRun], sweep: Sweep, only: list[str] | None) -> list[PlannedRun]:
    """`--only NAME`: those variants' runs, and every reference row."""
    if not only:
        return runs
    unknown = set(only) - {v.name for v in sweep.variants}
    if unknown:
        raise ConfigError(f"--only: no variant named {', '.join(sorted(unknown))}")
    return [r for r in runs if r.variant is None or r.variant.name in only]


def prepare_all(todo: list[PlannedRun], heldout: Heldout, store: ResultsStore) -> None:
    prepared: dict[str, Path] = {}
    for r in todo:
        if r.variant is not None:
            prepare_variant_data(r, heldout, store, prepared)
            if (store.get_run(r.run_id) or {}).get("status") in (None, "pending", "failed"):
                store.set_status(r.run_id, "prepared")


def train_and_evaluate_all(
    todo: list[PlannedRun],
    sweep: Sweep,
    heldout: Heldout,
    store: ResultsStore,
    planned: list[PlannedRun],
    general: GeneralAbilityConfig | None,
) -> tuple[int, list[str]]:
    """Reference rows are evaluated, variants trained then evaluated; one failure does not stop the others."""
    failed: list[str] = []
    done = 0
    with progress_bar() as bar:
        task = bar.add_task(f"Sweep {sweep.name}", total=len(todo), info="")
        for r in todo:
            label = r.recipe.name if r.recipe else f"base model {r.model_ref}"
            bar.update(task, info=label)
            if not (store.get_run(r.run_id) or {}).get("started"):
                store.upsert_run(r.run_id, started=now())
            try:
                if r.variant is not None:
                    train_run(r, store, planned)
                evaluate_run(r, sweep, heldout, store, general)
                done += 1
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # one broken variant must not lose the others' results
                store.set_status(r.run_id, "failed", error=f"{type(err).__name__}: {err}")
                failed.append(label)
                console.print(f"[bold red]{label} failed:[/] {err}")
                if not isinstance(err, TunelabError):
                    console.print(traceback.format_exc())
            bar.update(task, advance=1)
    return done, failed


def write_sweep_summary(sweep: Sweep, heldout: Heldout) -> None:
    atomic_write_json(
        sweep.folder / "sweep.json",
        {
            "name": sweep.name,
            "file": str(sweep.file),
            "baseline": sweep.baseline.name,
            "seeds": sweep.seeds,
            "variants": [{"name": v.name, "set": v.settings, "config_id": v.config_id, "kinds": sorted(v.kinds)} for v in sweep.variants],
            "heldout": {
                "path": str(heldout.path),
                "examples": len(heldout.examples),
                "hash": heldout.split_hash,
                "carved_from": heldout.carved_from,
            },
            "updated": now(),
        },
    )


def describe_plan(sweep: Sweep) -> None:
    status: dict[str, str] = {}
    if store_path(sweep.folder).is_file():
        with ResultsStore(store_path(sweep.folder)) as store:
            status = {r["id"]: r["status"] for r in store.runs()}
    table = Table(title=f"sweep {sweep.name}: {len(sweep.variants)} variants × {len(sweep.seeds)} seed(s) → {sweep.folder}")
    for col in ["variant", "kind", "changes vs baseline", "seeds", "status"]:
        table.add_column(col, overflow="fold")
    for v in sweep.variants:
        changes = recipe_changes(sweep.baseline.recipe, v.recipe)
        text = "(baseline)" if v is sweep.baseline else "; ".join(change_phrase(k, a, b, plain=True) for k, (a, b) in changes.items())
        states = [status.get(f"{v.config_id}-s{s}", "new") for s in sweep.seeds]
        # escaped: a list value such as [gguf-q8_0] reads to Rich as a style tag and would vanish
        table.add_row(v.name, "+".join(sorted(v.kinds)) or "-", escape(text), ",".join(map(str, sweep.seeds)), ",".join(states))
    print_table(table)


def sweep_cli(sweep_file: str | Path, dry_run: bool = False, shard: str | None = None, only: list[str] | None = None) -> dict | None:
    sweep = load_sweep(sweep_file)
    if dry_run:
        describe_plan(sweep)
        return None
    result = run_sweep(sweep, shard=shard, only=only)
    if result["failed"]:
        raise TunelabError(
            f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])} (details in {store_path(sweep.folder)}; "
            "fix and re-run the sweep: finished runs are kept)"
        )
    console.print(
        f"[green]sweep '{sweep.name}' complete[/]: {result['done']} run(s) done, {result['skipped']} already in the store. "
        f"Next: tunelab compare {sweep_file}"
    )
    return result
