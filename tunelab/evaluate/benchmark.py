"""Multiple-choice benchmarks: ARC-Easy, ARC-Challenge, or any file of questions with choices
and the correct answer, scored the way lm-evaluation-harness scores them.

The protocol (lm-eval's `arc_easy`/`arc_challenge` tasks, HFLM model):
- the context is `Question: <question>\\nAnswer:` (plain text, no chat template) and each
  choice is scored as the continuation ` <choice>`;
- a pair is encoded as HFLM encodes it: the context's trailing spaces move to the
  continuation, the whole text and the context are tokenized with the tokenizer's own
  defaults, and the continuation is the whole's tokens after the context's;
- `acc`: the choice with the highest summed log-likelihood; `acc_norm`: the highest
  log-likelihood per character of the choice text.
tests/test_benchmark.py runs lm-evaluation-harness itself on the same questions and checks
that both give the same per-choice log-likelihoods and accuracies.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from tunelab.config import GeneralAbilityConfig
from tunelab.data.loaders import read_file_records
from tunelab.errors import DataError, TunelabError
from tunelab.evaluate.loading import free_memory, load_for_scoring, run_dirs_among, unique_names, with_base_model
from tunelab.evaluate.metric_facts import label, verdict
from tunelab.evaluate.stats import bootstrap_ci, bootstrap_method, paired_bootstrap
from tunelab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from tunelab.models.load import set_threads, wants_bf16
from tunelab.paths import shared_data_dir
from tunelab.progress import console, print_table, progress_bar
from tunelab.runs import BenchmarkDir, RunDir, now, package_versions

SEED = 0  # bootstrap resampling seed

# Named benchmarks: the test sets in the shared data folder (see its README for sources).
BENCHMARKS = {"arc-easy": "arc_easy_test.jsonl", "arc-challenge": "arc_challenge_test.jsonl"}
# Field names tried, in order, when a file's fields are not mapped explicitly.
FIELD_NAMES = {
    "question": ("query", "question", "context", "stem"),
    "choices": ("choices", "options", "endings"),
    "gold": ("gold", "answer", "answerKey", "label"),
}


@dataclass(frozen=True)
class Question:
    id: str
    context: str  # "Question: ...\nAnswer:"
    choices: tuple[str, ...]
    gold: int


def benchmark_path(name: str) -> Path:
    """The file behind a benchmark name (`arc-easy`, `arc-challenge`) or a path to any multiple-choice file."""
    if name in BENCHMARKS:
        folder = shared_data_dir()
        path = folder / BENCHMARKS[name] if folder else None
        if path is None or not path.is_file():
            raise TunelabError(
                f"benchmark '{name}' reads {BENCHMARKS[name]} from the shared data folder, which was not found "
                "(set TUNELAB_DATA_DIR, or pass the file's path instead of the name)"
            )
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        raise TunelabError(f"--benchmark '{name}': not one of {', '.join(BENCHMARKS)} and not a file")
    return path


def benchmark_name(name: str) -> str:
    return name if name in BENCHMARKS else Path(name).stem


def _field(record: dict, role: str, fields: dict[str, str], file: str, index: int) -> str:
    if role in fields:
        if fields[role] not in record:
            raise DataError(file, index, fields[role], f"missing (mapped as the {role})")
        return fields[role]
    for name in FIELD_NAMES[role]:
        if name in record:
            return name
    tried = ", ".join(FIELD_NAMES[role])
    raise DataError(file, index, None, f"no {role} field (tried {tried}); map it with --field {role}=NAME")


def _choices(value, file: str, index: int, field: str) -> tuple[list[str], list[str] | None]:
    """(choice texts, their labels if the file gives them): a list, a JSON list, or {"text": [...], "label": [...]}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(file, index, field, "expected a list of choices (or its JSON text)") from None
    labels = None
    if isinstance(value, dict) and "text" in value:
        labels = [str(x) for x in value.get("label") or []] or None
        value = value["text"]
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) and c.strip() for c in value):
        raise DataError(file, index, field, "expected at least two non-empty choice texts")
    return value, labels


def _gold(value, choices: list[str], labels: list[str] | None, file: str, index: int, field: str) -> int:
    """The correct choice's index from a label ('B', '2'), the choice text, an index, or a letter."""
    if isinstance(value, bool) or value is None:
        raise DataError(file, index, field, f"{value!r} is not an answer")
    text = str(value).strip()
    if labels and text in labels:
        return labels.index(text)
    if isinstance(value, str) and text in choices:  # the answer written out ("4" among choices "3", "4")
        return choices.index(text)
    if isinstance(value, int) or text.lstrip("-").isdigit():
        k = int(text)
        if 0 <= k < len(choices):
            return k
        raise DataError(file, index, field, f"answer index {k} is outside the {len(choices)} choices")
    if len(text) == 1 and text.upper() in string.ascii_uppercase[: len(choices)]:
        return string.ascii_uppercase.index(text.upper())
    raise DataError(file, index, field, f"answer {text!r} is neither an index, a label, a letter nor one of the choices")


def context_of(question: str) -> str:
    """lm-eval's ARC prompt: `Question: <question>\\nAnswer:` (a question already in that form is kept)."""
    text = question.strip()
    if not text.startswith("Question:"):
        text = f"Question: {text}"
    return text if text.endswith("Answer:") else f"{text}\nAnswer:"


def read_questions(path: Path, fields: dict[str, str] | None = None) -> list[Question]:
    """Every question of a JSON/JSONL/CSV/Parquet file; `fields` maps question/choices/gold to its field names."""
    fields = fields or {}
    unknown = set(fields) - set(FIELD_NAMES)
    if unknown:
        raise TunelabError(f"--field {sorted(unknown)[0]}: the fields are {', '.join(FIELD_NAMES)}")
    file = Path(path).name
    records = read_file_records(Path(path))
    if not records:
        raise DataError(file, None, None, "no questions")
    questions = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(file, i, None, f"a question must be an object, not {type(record).__name__}")
        q_field, c_field, g_field = (_field(record, role, fields, file, i) for role in ("question", "choices", "gold"))
        if not isinstance(record[q_field], str) or not record[q_field].strip():
            raise DataError(file, i, q_field, "the question is empty")
        choices, labels = _choices(record[c_field], file, i, c_field)
        gold = _gold(record[g_field], choices, labels, file, i, g_field)
        qid = str(record.get("id", i))
        questions.append(Question(qid, context_of(record[q_field]), tuple(choices), gold))
    return questions


def sample_questions(questions: list[Question], n: int | None, seed: int = 0) -> list[Question]:
    """A seeded sample of n questions in file order (all of them when n is None or larger)."""
    if n is None or n >= len(questions):
        return list(questions)
    keep = set(random.Random(seed).sample(range(len(questions)), n))
    return [q for i, q in enumerate(questions) if i in keep]


def without_sample(questions: list[Question], n: int, seed: int) -> list[Question]:
    """The questions left once the seeded sample `sample_questions(questions, n, seed)` is taken out: a
    validation pool that shares no question with that (reported) sample."""
    taken = {id(q) for q in sample_questions(questions, n, seed)}
    return [q for q in questions if id(q) not in taken]


def questions_hash(questions: list[Question]) -> str:
    digest = hashlib.sha256()
    for q in questions:
        digest.update(json.dumps([q.context, q.choices, q.gold], ensure_ascii=False).encode())
    return digest.hexdigest()


def encode_pair(encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-eval's HFLM `_encode_pair` makes them; `encode` is
    the model's default tokenization (ChatModel.encode)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids) :]


def choice_logprobs(chat, questions: list[Question], batch_size: int = 16, on_batch=None, bf16: bool = False) -> list[list[float]]:
    """Log-likelihood of ` <choice>` after each question's context, per choice, from any ChatModel."""
    pairs, owner = [], []
    for k, q in enumerate(questions):
        for choice in q.choices:
            pairs.append(encode_pair(chat.encode, q.context, " " + choice))
            owner.append(k)
    scored = chat.loglikelihood(pairs, batch_size, on_batch, bf16=bf16)
    out: list[list[float]] = [[] for _ in questions]
    for (logprob, _), k in zip(scored, owner):
        out[k].append(logprob)
    return out


def accuracies(questions: list[Question], logprobs: list[list[float]]) -> dict[str, list]:
    """Per question: acc, acc_norm (0/1) and the picks behind them, as lm-eval's multiple_choice task computes them."""
    out: dict[str, list] = {"acc": [], "acc_norm": [], "pick": [], "pick_norm": []}
    for q, lls in zip(questions, logprobs):
        lls_arr = np.asarray(lls)
        pick = int(np.argmax(lls_arr))
        pick_norm = int(np.argmax(lls_arr / np.array([float(len(c)) for c in q.choices])))
        out["acc"].append(float(pick == q.gold))
        out["acc_norm"].append(float(pick_norm == q.gold))
        out["pick"].append(pick)
        out["pick_norm"].append(pick_norm)
    return out


# ---------------------------------------------------------------- running a benchmark on models
METRICS = ("acc", "acc_norm")


@dataclass
class ModelScores:
    name: str
    ref: str
    backend: str
    logprobs: list[list[float]]
    scores: dict[str, list]
    seconds: float


def score_model(ref: str, name: str, questions: list[Question], batch_size: int, bf16: bool) -> ModelScores:
    """Load one model, score every choice of every question with a progress bar, free the model."""
    chat, backend = load_for_scoring(ref)
    n_choices = sum(len(q.choices) for q in questions)
    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"Choices ({name})", total=n_choices, info="")
        try:
            logprobs = choice_logprobs(chat, questions, batch_size, on_batch=lambda n: bar.update(task, advance=n), bf16=bf16)
        except NotImplementedError as err:
            raise TunelabError(
                f"{ref}: a multiple-choice benchmark needs log-likelihoods, which the {chat.backend} backend lacks ({err})"
            ) from None
    seconds = time.perf_counter() - start
    del chat
    free_memory()
    return ModelScores(name, str(ref), backend, logprobs, accuracies(questions, logprobs), seconds)


def summarize(
    bench: str,
    path: Path,
    questions: list[Question],
    total: int,
    seed: int,
    bf16: bool,
    scored: list[ModelScores],
    samples: int,
    disjoint_from: tuple[int, int] | None = None,
) -> dict:
    base = scored[0]
    models = {}
    for s in scored:
        block = {m: {**bootstrap_ci(s.scores[m], n=samples, seed=SEED), "n": len(questions)} for m in METRICS}
        models[s.name] = {
            "ref": s.ref,
            "backend": s.backend,
            **block,
            "seconds": round(s.seconds, 2),
            "questions_per_second": round(len(questions) / max(s.seconds, 1e-9), 2),
        }
    differences = {s.name: {m: paired_bootstrap(base.scores[m], s.scores[m], n=samples, seed=SEED) for m in METRICS} for s in scored[1:]}
    return {
        "created": now(),
        "benchmark": bench,
        "file": str(path),
        "questions": len(questions),
        "of": total,
        "seed": seed,
        # (questions, seed) of the sample left out before sampling: a validation sample disjoint from it
        "disjoint_from": {"max_questions": disjoint_from[0], "seed": disjoint_from[1]} if disjoint_from else None,
        "sha256": questions_hash(questions),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "protocol": "lm-evaluation-harness multiple_choice: context 'Question: ...\\nAnswer:', continuation ' <choice>'; "
        "acc = argmax log-likelihood, acc_norm = argmax log-likelihood per character",
        "bootstrap": bootstrap_method(samples, SEED),
        "baseline": base.name,
        "models": models,
        "differences": differences,
        "versions": package_versions(),
    }


def question_scores(out_dir: Path, name: str) -> dict[str, dict[str, float]]:
    """Model `name`'s score on each question of a written benchmark (metric -> question id -> 0 or 1), the
    way `accuracies` counts them: what a sweep stores to compare variants question by question."""
    rows = read_jsonl(BenchmarkDir(Path(out_dir)).predictions)
    return {
        "acc": {str(r["id"]): float(r[name]["pick"] == r["gold"]) for r in rows},
        "acc_norm": {str(r["id"]): float(r[name]["pick_norm"] == r["gold"]) for r in rows},
    }


def summary_markdown(result: dict) -> str:
    apart = result.get("disjoint_from")
    head = f"{result['questions']} of {result['of']} questions" + (
        f" (seeded sample, seed {result['seed']}"
        + (f"; none of the {apart['max_questions']} questions of seed {apart['seed']}" if apart else "")
        + ")"
        if result["questions"] < result["of"]
        else ""
    )
    lines = [
        f"# {result['benchmark']}: {', '.join(result['models'])}",
        "",
        f"{head} from `{Path(result['file']).name}`, {result['precision']}; {result['protocol']}.",
        "Each cell: mean [95% bootstrap interval]; Δ: paired bootstrap against the first model, two-sided p.",
        "",
        "| model | accuracy | accuracy (length-normalised) | Δ acc | Δ acc_norm | questions/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        d = result["differences"].get(name, {})
        delta = [
            f"{x['diff']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}] p={x['p_value']:.3f}" if x else ""
            for x in (d.get("acc"), d.get("acc_norm"))
        ]
        cells = [f"{m[k]['mean']:.3f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]" for k in METRICS]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {delta[0]} | {delta[1]} | {m['questions_per_second']} |")
    verdict_line = forgetting_verdict(result)
    return "\n".join(lines + (["", verdict_line] if verdict_line else []) + [""])


def forgetting_verdict(result: dict) -> str | None:
    """One line: did the second model keep the first one's general ability on this benchmark?"""
    if not result["differences"]:
        return None
    name, d = next(iter(result["differences"].items()))
    verdicts = {m: verdict(m, d[m]) for m in METRICS}
    change = ", ".join(f"{label(m)} {d[m]['diff']:+.3f} [{d[m]['low']:+.3f}, {d[m]['high']:+.3f}]" for m in METRICS)
    if "worse" in verdicts.values():
        return f"**{name} lost general reasoning** on {result['benchmark']} against {result['baseline']}: {change}."
    if "better" in verdicts.values():
        return f"**{name} gained** on {result['benchmark']} against {result['baseline']}: {change}."
    return f"**{name} kept its general reasoning** on {result['benchmark']} (no measurable change against {result['baseline']}): {change}."


def rich_table(result: dict) -> Table:
    table = Table(title=f"{result['benchmark']}: {result['questions']} questions — mean [95% CI]; Δ vs {result['baseline']} (paired)")
    for col in ("model", "acc", "acc_norm", "Δ acc", "Δ acc_norm"):
        table.add_column(col, no_wrap=col == "model")
    for name, m in result["models"].items():
        d = result["differences"].get(name, {})
        table.add_row(
            name,
            *[f"{m[k]['mean']:.3f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]" for k in METRICS],
            *[f"{d[k]['diff']:+.3f} [{d[k]['low']:+.3f}, {d[k]['high']:+.3f}] p={d[k]['p_value']:.3f}" if k in d else "" for k in METRICS],
        )
    return table


def write_benchmark(out_dir: Path, result: dict, questions: list[Question], scored: list[ModelScores]) -> None:
    rows = [
        {
            "id": q.id,
            "context": q.context,
            "choices": list(q.choices),
            "gold": q.gold,
            **{s.name: {"logprobs": s.logprobs[i], "pick": s.scores["pick"][i], "pick_norm": s.scores["pick_norm"][i]} for s in scored},
        }
        for i, q in enumerate(questions)
    ]
    with atomic_dir(out_dir) as tmp:
        files = BenchmarkDir(tmp)
        atomic_write_json(files.benchmark_json, result)
        atomic_write_jsonl(files.predictions, rows)
        atomic_write_text(files.summary_md, summary_markdown(result))


def run_benchmark(
    models: list[str],
    benchmark: str,
    out_dir: Path,
    *,
    names: list[str] | None = None,
    max_questions: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    bf16: bool = False,
    fields: dict[str, str] | None = None,
    bootstrap_samples: int = 1000,
    disjoint_from: tuple[int, int] | None = None,
) -> dict:
    """Score `models` on a multiple-choice benchmark (the first is the baseline); write out_dir atomically.
    `disjoint_from` (questions, seed): the seeded sample left out before this one is drawn."""
    path = benchmark_path(benchmark)
    every = read_questions(path, fields)
    pool = without_sample(every, *disjoint_from) if disjoint_from else every
    questions = sample_questions(pool, max_questions, seed)
    names = unique_names(names or [Path(m).name if Path(m).exists() else str(m) for m in models])
    scored = [score_model(ref, name, questions, batch_size, bf16) for ref, name in zip(models, names)]
    result = summarize(benchmark_name(benchmark), path, questions, len(every), seed, bf16, scored, bootstrap_samples, disjoint_from)
    write_benchmark(Path(out_dir), result, questions, scored)
    return result


def run_general_ability(models: list[str], names: list[str], cfg: GeneralAbilityConfig, out_dir: Path) -> dict:
    """The general-ability check a recipe's `eval.general_ability` describes, on `models` (the first is the baseline)."""
    return run_benchmark(
        models,
        cfg.benchmark,
        out_dir,
        names=names,
        max_questions=cfg.max_questions,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        bf16=wants_bf16(cfg.precision),
        disjoint_from=(cfg.disjoint_from.max_questions, cfg.disjoint_from.seed) if cfg.disjoint_from else None,
    )


def benchmark_cli(
    models: list[str],
    benchmark: str,
    *,
    out: Path | None = None,
    names: list[str] | None = None,
    max_questions: int | None = None,
    seed: int = 0,
    batch_size: int,
    precision: str = "fp32",
    fields: dict[str, str] | None = None,
    compare_base: bool,
) -> dict:
    """`tunelab benchmark MODEL... --benchmark NAME`: the table, the verdict and where the files went.
    `fields` maps a role (question, choices, gold) to a file's own field name. `batch_size` and
    `compare_base` have no default here: the command passes the recipe's (EvalConfig's)."""
    if precision not in ("fp32", "bf16", "auto"):
        raise TunelabError(f"--precision '{precision}': choose fp32 (matches lm-evaluation-harness exactly), bf16 or auto")
    models, names = with_base_model(models, names, compare_base)
    runs = run_dirs_among(models)
    name = benchmark_name(benchmark)
    out = out or (RunDir(runs[0]).benchmark(name) if runs else Path("eval") / name)
    set_threads()
    result = run_benchmark(
        models,
        benchmark,
        out,
        names=names,
        max_questions=max_questions,
        seed=seed,
        batch_size=batch_size,
        bf16=wants_bf16(precision),
        fields=fields,
    )
    print_table(rich_table(result))
    line = forgetting_verdict(result)
    if line:
        console.print(line.replace("**", ""))
    console.print(f"[green]wrote[/] {out}/: benchmark.json, predictions.jsonl, summary.md")
    return result
