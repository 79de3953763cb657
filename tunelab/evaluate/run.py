"""`tunelab eval`: score one or more models on the same held-out examples and compare them.

`evaluate_models(models, examples, cfg, out_dir, names)` does the work and writes, atomically
(built in a temporary folder, renamed at the end; nothing is left behind on error):
eval.json, predictions.jsonl, summary.md, samples.html and metrics.png.
`evaluate_cli(models, config=EvalConfig)` is the command: it finds the held-out data and output folder of a run
directory, prints the comparison table, and adds the base model of a lone run directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import EvalConfig
from tunelab.data import load_examples
from tunelab.errors import DataError, TunelabError
from tunelab.evaluate import human, likelihood, report, tasks
from tunelab.evaluate.examples import split_example
from tunelab.evaluate.generation import GenerationPlan, choose_generation
from tunelab.evaluate.loading import free_memory, load_for_scoring, run_dirs_among, unique_names, with_base_model
from tunelab.evaluate.metric_facts import higher_is_better
from tunelab.evaluate.metrics import BERTSCORE_KEYS, TEXT_METRICS, bertscore_scorer, encoder_layers, resolve_encoder, score_predictions
from tunelab.evaluate.preference import evaluate_preferences, has_pairs
from tunelab.evaluate.stats import bootstrap_ci, bootstrap_method, paired_bootstrap
from tunelab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from tunelab.models.chat import GenerationSettings
from tunelab.models.load import set_threads, wants_bf16
from tunelab.progress import console, print_table, progress_bar
from tunelab.runs import EvalDir, RunDir, now, package_versions

SEED = 0


def data_hash(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(
            json.dumps(
                [r["id"], r["prompt"], r["reference"], r.get("choices"), r.get("answer_index")], ensure_ascii=False, sort_keys=True
            ).encode()
        )
    return digest.hexdigest()


# ---------------------------------------------------------------- one model
def generation_of(cfg: EvalConfig) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=SEED)


def generate_answers(plan: GenerationPlan, rows: list[dict], cfg: EvalConfig, label: str) -> tuple[list[str], dict]:
    """Answers in example order, generated in batches of similar length, with a progress bar.

    `plan` (evaluate/generation.py) says what generates them: today's float32 transformers, bf16
    drafts checked by float32 (the same answers, faster), bf16 weights or the run's GGUF.
    """
    settings = generation_of(cfg)
    order = sorted(range(len(rows)), key=lambda i: sum(len(m["content"]) for m in rows[i]["prompt"]))
    answers: list[str] = [""] * len(rows)
    tokens = 0
    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"Generating ({label})", total=len(rows), info="")
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            outs = plan.generate([rows[i]["prompt"] for i in idx], settings, batch_size=cfg.batch_size)
            for i, text in zip(idx, outs):
                answers[i] = text
                tokens += plan.chat.count_tokens(text)
            seconds = time.perf_counter() - start
            bar.update(task, advance=len(idx), info=f"{tokens / max(seconds, 1e-9):.1f} tok/s")
    seconds = time.perf_counter() - start
    info = {"seconds": round(seconds, 2), "answer_tokens": tokens, "tokens_per_second": round(tokens / max(seconds, 1e-9), 2)}
    info["backend"] = plan.label
    if plan.draft is not None:
        info["draft_check"] = plan.stats.as_dict()
    return answers, info


def likelihood_scores(chat, rows: list[dict], cfg: EvalConfig, label: str) -> tuple[dict[str, list], dict, dict]:
    """Perplexity of the references and multiple-choice picks, from the backend's log-likelihoods."""
    per_example: dict[str, list] = {}
    corpus: dict[str, float] = {}
    notes: dict[str, str] = {}
    wanted_ppl = "perplexity" in cfg.metrics
    wanted_mc = cfg.task == "multiple_choice"
    if not (wanted_ppl or wanted_mc):
        return per_example, corpus, notes
    with progress_bar() as bar:
        if wanted_ppl:
            task = bar.add_task(f"Perplexity ({label})", total=len(rows), info="")
            ppl, corpus["perplexity"] = likelihood.perplexities(
                chat,
                [r["prompt"] for r in rows],
                [r["reference"] for r in rows],
                cfg.batch_size,
                on_batch=lambda n: bar.update(task, advance=n),
            )
            per_example["perplexity"] = ppl
        if wanted_mc:
            n_choices = sum(len(r["choices"]) for r in rows)
            task = bar.add_task(f"Choices ({label})", total=n_choices, info="")
            picks = likelihood.choose(
                chat,
                [r["prompt"] for r in rows],
                [r["choices"] for r in rows],
                cfg.batch_size,
                on_batch=lambda n: bar.update(task, advance=n),
            )
            per_example["multiple_choice"] = [float(p == r["answer_index"]) for p, r in zip(picks, rows)]
            per_example["choice"] = picks
    return per_example, corpus, notes


# ---------------------------------------------------------------- one model
@dataclass
class ModelEval:
    """Everything one model produced on the evaluation set, example by example."""

    name: str
    ref: str
    backend: str
    answers: list[str] | None
    scores: dict[str, list] = field(default_factory=dict)  # metric -> per-example value (None: not computable)
    corpus: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    generation: dict | None = None
    signatures: dict[str, str] = field(default_factory=dict)
    scoring_seconds: float = 0.0


def needs_answers(cfg: EvalConfig) -> bool:
    return any(m in TEXT_METRICS for m in cfg.metrics) or cfg.task in tasks.GENERATION_TASKS


def score_answers(model: ModelEval, rows: list[dict], cfg: EvalConfig) -> None:
    """Text metrics and generation tasks on the model's answers (timed: the scoring cost)."""
    text_metrics = [m for m in cfg.metrics if m in TEXT_METRICS]
    references = [r["reference"] for r in rows]
    start = time.perf_counter()
    if text_metrics:
        with console.status(f"Scoring {model.name}: {', '.join(text_metrics)}"):
            scored = score_predictions(
                model.answers, references, text_metrics, cfg.bertscore_model, bertscore_bf16=wants_bf16(cfg.bertscore_precision)
            )
        model.scores.update(scored["per_example"])
        model.corpus.update(scored["corpus"])
        model.signatures.update(scored["signatures"])
    if cfg.task in tasks.GENERATION_TASKS:
        model.scores[cfg.task] = tasks.score_task(cfg.task, model.answers, references, cfg.keywords)
    model.scoring_seconds = time.perf_counter() - start


def evaluate_one(ref: str, name: str | None, rows: list[dict], cfg: EvalConfig) -> ModelEval:
    """Load a model, generate and compute log-likelihoods, free it, then score its answers."""
    console.print(f"[bold]Loading[/] {ref}")
    chat, backend = load_for_scoring(ref)
    model = ModelEval(name=name or chat.name, ref=str(ref), backend=backend, answers=None)
    if needs_answers(cfg):
        plan = choose_generation(chat, ref, cfg.generation_backend, cfg.generation_precision, generation_of(cfg))
        model.answers, model.generation = generate_answers(plan, rows, cfg, model.name)
        del plan  # a bf16 draft copy or a GGUF runtime: freed with the model below
    model.scores, model.corpus, model.notes = likelihood_scores(chat, rows, cfg, model.name)
    del chat
    free_memory()
    score_answers(model, rows, cfg)
    return model


# ---------------------------------------------------------------- statistics
def metric_summary(values: list, cfg: EvalConfig, corpus: float | None = None, note: str | None = None) -> dict:
    if note or not values or any(v is None for v in values):
        return {"mean": None, "low": None, "high": None, "n": len(values), "note": note or "not computed"}
    out = {**bootstrap_ci(values, n=cfg.bootstrap_samples, seed=SEED), "n": len(values)}
    if corpus is not None:
        out["corpus"] = corpus
    return out


def differences(base: dict[str, list], other: dict[str, list], cfg: EvalConfig) -> dict:
    out = {}
    for metric, a in base.items():
        b = other.get(metric)
        if metric == "choice" or b is None or any(v is None for v in a) or any(v is None for v in b):
            continue
        d = paired_bootstrap(a, b, n=cfg.bootstrap_samples, seed=SEED)
        d["better"] = (d["diff"] > 0) == higher_is_better(metric)
        out[metric] = d
    return out


def subset(scores: dict[str, list], idx: list[int]) -> dict[str, list]:
    return {m: [values[i] for i in idx] for m, values in scores.items()}


def comparison(models: list[ModelEval], metric_order: list[str], cfg: EvalConfig, idx: list[int], with_corpus: bool) -> dict:
    """{"models": {name: {"metrics"}}, "differences": {name: paired differences against the first}} on examples `idx`."""
    blocks, base_scores = {}, subset(models[0].scores, idx)
    for m in models:
        mine = subset(m.scores, idx)
        metrics = {k: metric_summary(mine.get(k, []), cfg, m.corpus.get(k) if with_corpus else None, m.notes.get(k)) for k in metric_order}
        blocks[m.name] = {"metrics": metrics}
    diffs = {m.name: differences(base_scores, subset(m.scores, idx), cfg) for m in models[1:]}
    return {"n": len(idx), "models": blocks, "differences": diffs}


def source_name(row: dict) -> str:
    """The data file an example came from: prepared examples carry `<file>:<record>` as their source."""
    source = row.get("source")
    return str(source).rsplit(":", 1)[0] if source else "unknown"


def by_source(rows: list[dict], models: list[ModelEval], metric_order: list[str], cfg: EvalConfig) -> dict | None:
    """The same comparison within each data source, when the examples come from more than one."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(source_name(row), []).append(i)
    if len(groups) < 2:
        return None
    return {src: comparison(models, metric_order, cfg, idx, with_corpus=False) for src, idx in groups.items()}


RANKING = ("multiple_choice", "exact_match", "contains", "keywords", "gsm8k", "bertscore_f1", "rougeL", "chrf", "bleu", "perplexity")


def losses_against_base(models: list[ModelEval]) -> tuple[str | None, list[float] | None]:
    """How much the second model lost against the first on each example (positive = worse).

    Ranked by the task metric, else BERTScore F1, ROUGE-L, chrF, BLEU, perplexity: the first of
    these both models have and on which they differ somewhere (a task both always fail ranks nothing).
    """
    if len(models) < 2:
        return None, None
    first, second = models[0].scores, models[1].scores
    for metric in RANKING:
        a, b = first.get(metric), second.get(metric)
        if not a or not b or any(v is None for v in a + b) or a == b:
            continue
        sign = 1.0 if higher_is_better(metric) else -1.0
        return metric, [sign * (x - y) for x, y in zip(a, b)]
    return None, None


# ---------------------------------------------------------------- the whole evaluation
def prepare_rows(examples: list[dict], cfg: EvalConfig, source: str = "evaluation data") -> list[dict]:
    if not examples:
        raise TunelabError(f"{source}: the evaluation set is empty (no examples to score)")
    if cfg.max_examples:
        examples = examples[: cfg.max_examples]
    return [split_example(e, i, source, cfg.task) for i, e in enumerate(examples)]


def check_metrics(cfg: EvalConfig) -> None:
    """Fail before any generation if the BERTScore encoder cannot be loaded."""
    if "bertscore" in cfg.metrics:
        model_type = resolve_encoder(cfg.bertscore_model)
        bertscore_scorer(model_type, encoder_layers(model_type))


def generation_settings(cfg: EvalConfig) -> dict:
    return {
        "greedy": cfg.temperature == 0,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size,
        "backend": cfg.generation_backend,
        "precision": cfg.generation_precision,
        "seed": SEED,
        "stop": "end-of-sequence token or max_new_tokens",
        "prompt": "each model's own chat template, with the generation prompt",
    }


def assemble(rows: list[dict], models: list[ModelEval], cfg: EvalConfig, source: str, losses: tuple) -> dict:
    """The content of eval.json."""
    order_of_metrics = ("bleu", "chrf", "rougeL", *BERTSCORE_KEYS, "perplexity", cfg.task)
    metric_order = [m for m in order_of_metrics if any(m in model.scores for model in models)]
    overall = comparison(models, metric_order, cfg, list(range(len(rows))), with_corpus=True)
    loss_metric, loss_values = losses
    order = sorted(range(len(rows)), key=lambda i: -loss_values[i]) if loss_values else []
    for model in models:
        overall["models"][model.name].update(ref=model.ref, backend=model.backend, generation=model.generation)
    return {
        "created": now(),
        "baseline": models[0].name,
        "metric_order": metric_order,
        "models": overall["models"],
        "differences": overall["differences"],
        "by_source": by_source(rows, models, metric_order, cfg),
        "n_examples": len(rows),
        "data": {"source": source, "sha256": data_hash(rows)},
        "task": cfg.task,
        "generation_settings": generation_settings(cfg),
        "bootstrap": {
            **bootstrap_method(cfg.bootstrap_samples, SEED),
            "p_value": "two-sided paired bootstrap: twice the share of resamples on the other side of zero",
        },
        "signatures": {k: v for model in models for k, v in model.signatures.items()},
        "bertscore_model": cfg.bertscore_model if "bertscore" in cfg.metrics else None,
        "scoring_seconds": round(sum(model.scoring_seconds for model in models), 2),
        "error_analysis": {
            "metric": loss_metric,
            "compared": [models[0].name, models[1].name] if loss_values else None,
            "largest_losses": [{"id": rows[i]["id"], "loss": loss_values[i]} for i in order[:10] if loss_values[i] > 0],
        },
        "versions": package_versions(),
    }


def prediction_rows(rows: list[dict], models: list[ModelEval]) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        row = {
            "id": r["id"],
            "source": r.get("source"),
            "prompt": r["prompt"],
            "reference": r["reference"],
            "predictions": {m.name: (m.answers[i] if m.answers is not None else None) for m in models},
            "scores": {m.name: {k: v[i] for k, v in m.scores.items()} for m in models},
        }
        if "choices" in r:
            row["choices"], row["answer_index"] = r["choices"], r["answer_index"]
        out.append(row)
    return out


def write_outputs(out_dir: Path, result: dict, predictions: list[dict], losses: list[float] | None) -> None:
    """eval.json, predictions.jsonl, summary.md, samples.html (worst losses first) and metrics.png, atomically."""
    order = sorted(range(len(predictions)), key=lambda i: -losses[i]) if losses else list(range(len(predictions)))
    with atomic_dir(out_dir) as tmp:
        files = EvalDir(tmp)
        atomic_write_json(files.eval_json, result)
        atomic_write_jsonl(files.predictions, predictions)
        atomic_write_text(files.summary_md, report.summary_markdown(result))
        atomic_write_text(
            files.samples_html, report.samples_html(result, [predictions[i] for i in order], losses and [losses[i] for i in order])
        )
        report.metrics_png(result, files.metrics_plot)
        human.keep_votes(out_dir, tmp)  # people's votes are not this stage's to replace


def evaluate_models(
    models: list[str],
    examples: list[dict],
    cfg: EvalConfig,
    out_dir: Path,
    names: list[str] | None = None,
    *,
    source: str = "evaluation data",
) -> dict:
    """Generate, score and compare `models` on `examples`; write the result files to `out_dir`.

    The first model is the baseline every other model is compared against. Returns the
    content of eval.json.
    """
    if not models:
        raise TunelabError("give at least one model to evaluate")
    if names is not None and len(names) != len(models):
        raise TunelabError(f"{len(names)} names for {len(models)} models")
    rows = prepare_rows(examples, cfg, source)
    check_metrics(cfg)
    evaluated: list[ModelEval] = []
    for k, ref in enumerate(models):
        model = evaluate_one(ref, names[k] if names else None, rows, cfg)
        model.name = unique_names([m.name for m in evaluated] + [model.name])[-1]
        evaluated.append(model)
    losses = losses_against_base(evaluated)
    result = assemble(rows, evaluated, cfg, source, losses)
    write_outputs(Path(out_dir), result, prediction_rows(rows, evaluated), losses[1])
    return result


# ---------------------------------------------------------------- the command
def load_eval_examples(path: Path) -> list[dict]:
    """Examples from a held-out file: any format the data stage reads (message-schema JSONL included)."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), None, None, "file not found")
    if path.suffix == ".jsonl":
        # Prepared splits are already in the message schema; read them as they are, so extra
        # fields (choices, answer) survive.
        rows = read_jsonl(path)  # a line that is not JSON is a DataError naming the file and line
        if not rows or all(isinstance(r, dict) and "messages" in r for r in rows):
            return rows
    return load_examples(path)


def evaluate_cli(
    models: list[str],
    *,
    config: EvalConfig,
    data: Path | None = None,
    out: Path | None = None,
    names: list[str] | None = None,
) -> dict:
    cfg = config
    models, names = with_base_model(models, names, cfg.compare_base)
    run_dirs = run_dirs_among(models)
    if data is None:
        if not run_dirs:
            raise TunelabError("give --data: no run directory among the models to take data/test.jsonl from")
        data = RunDir(run_dirs[0]).split("test")
        if not data.is_file():
            raise TunelabError(f"{run_dirs[0]} has no held-out split {data}; give --data")
    if out is None:
        out = RunDir(run_dirs[0]).eval if run_dirs else Path("eval")
    set_threads()
    examples = load_eval_examples(Path(data))
    result = evaluate_models(models, examples, cfg, Path(out), names=names, source=str(data))
    print_table(report.rich_table(result))
    for table in report.source_tables(result):
        print_table(table)
    console.print(f"[green]wrote[/] {out}/: eval.json, predictions.jsonl, summary.md, samples.html, metrics.png")
    if has_pairs(examples):  # preference pairs: held-out preference accuracy as well (evaluate/preference.py)
        pref = evaluate_preferences(
            models, list(result["models"]), examples, Path(out) / "preference", source=str(data), batch_size=cfg.batch_size
        )
        print_table(report.rich_table(pref, f"{pref['n_examples']} held-out pairs — mean [95% CI]; Δ vs {pref['baseline']}"))
        console.print(f"[green]wrote[/] {out}/preference/: preference.json, pairs.jsonl, summary.md")
    return result
