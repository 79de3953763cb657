"""Held-out preference accuracy: does a model give the chosen answer a higher log-likelihood than the rejected one?

For every held-out pair and every model, log p(answer | prompt) of both answers: the sum of the
log-probabilities of the answer's tokens as the chat template renders the assistant turn, after
the prompt as generation renders it (evaluate/likelihood.py `answer_pair`, the rendering training
used too), scored by the ChatModel's `loglikelihood`. Per model and pair:

- `preference_accuracy`: 1 when the chosen answer is the more likely, 0 when the rejected one is (½ for a tie);
- `preference_accuracy_per_token`: the same on the mean log-probability per answer token (a summed
  log-likelihood favours the shorter answer, whichever it is);
- `logp_margin`: log p(chosen) − log p(rejected), in nats.

Each model is compared with the first (the base) on the same pairs with a paired bootstrap
(evaluate/stats.py), as `tunelab eval` compares generation metrics. Against a reference model
(the base, or the SFT model DPO started from) a model's implicit DPO reward margin on a pair is
β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))] (`reward_margin`, with its interval), and
`reward_accuracy` is the share of pairs where it is positive: the held-out counterparts of the
`rewards/margins` and `rewards/accuracies` TRL logs while training.

Written atomically to the run's eval/preference/ (runs.py `PreferenceEvalDir`): preference.json,
pairs.jsonl (per pair: each model's log-likelihoods) and summary.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunelab.config import Recipe
from tunelab.errors import DataError, TunelabError
from tunelab.evaluate.likelihood import answer_pair
from tunelab.evaluate.loading import free_memory, load_for_scoring
from tunelab.evaluate.metric_facts import higher_is_better, label
from tunelab.evaluate.report import rich_table, table_rows
from tunelab.evaluate.stats import bootstrap_ci, bootstrap_method, paired_bootstrap
from tunelab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from tunelab.progress import console, print_table, progress_bar
from tunelab.runs import PreferenceEvalDir, RunDir, now, package_versions

SEED = 0
PAIR_METRICS = ("preference_accuracy", "preference_accuracy_per_token", "logp_margin")


# ---------------------------------------------------------------- pairs
def has_pairs(examples: list[dict]) -> bool:
    return any("rejected" in e for e in examples)


def pair_rows(examples: list[dict], source: str) -> list[dict]:
    """{"id", "source", "prompt", "chosen", "rejected"} for every pair of a prepared split (other examples are skipped)."""
    rows = []
    for i, e in enumerate(examples):
        if "rejected" not in e:
            continue
        messages = e.get("messages") or []
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise DataError(source, e.get("id", i), "messages", "a preference pair's messages must end with the chosen answer")
        rows.append(
            {
                "id": str(e.get("id", i)),
                "source": e.get("source"),
                "prompt": messages[:-1],
                "chosen": messages[-1]["content"],
                "rejected": e["rejected"]["content"],
            }
        )
    if not rows:
        raise TunelabError(f"{source}: no preference pairs (examples with a `rejected` answer) to score")
    return rows


def pairs_hash(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r["id"], r["prompt"], r["chosen"], r["rejected"]], ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- one model
def answer_loglikelihoods(ref: str, rows: list[dict], batch_size: int, name: str) -> list[dict]:
    """Per pair: {"chosen": [log-likelihood, tokens], "rejected": [...]} under the model `ref` (loaded, scored, freed)."""
    chat, _ = load_for_scoring(ref)
    token_pairs = []
    for r in rows:
        token_pairs += [answer_pair(chat.tokenizer, r["prompt"], r["chosen"]), answer_pair(chat.tokenizer, r["prompt"], r["rejected"])]
    with progress_bar() as bar:
        task = bar.add_task(f"Preferences ({name})", total=len(token_pairs), info="")
        scored = chat.loglikelihood(token_pairs, batch_size, on_batch=lambda n: bar.update(task, advance=n))
    del chat
    free_memory()
    return [{"chosen": list(scored[2 * i]), "rejected": list(scored[2 * i + 1])} for i in range(len(rows))]


def pair_scores(loglikelihoods: list[dict]) -> dict[str, list[float]]:
    """The per-pair metrics of one model (see the module docstring)."""

    def prefers(a: float, b: float) -> float:
        return 1.0 if a > b else 0.0 if a < b else 0.5

    out: dict[str, list[float]] = {m: [] for m in PAIR_METRICS}
    for ll in loglikelihoods:
        (c, nc), (r, nr) = ll["chosen"], ll["rejected"]
        out["preference_accuracy"].append(prefers(c, r))
        out["preference_accuracy_per_token"].append(prefers(c / nc, r / nr))
        out["logp_margin"].append(c - r)
    return out


# ---------------------------------------------------------------- comparison
def reward_margins(model: list[dict], reference: list[dict], beta: float) -> list[float]:
    """β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))] per pair."""
    return [beta * ((m["chosen"][0] - ref["chosen"][0]) - (m["rejected"][0] - ref["rejected"][0])) for m, ref in zip(model, reference)]


def interval(values: list[float], samples: int) -> dict:
    return {**bootstrap_ci(values, n=samples, seed=SEED), "n": len(values)}


def compare(names: list[str], refs: list[str], lls: dict[str, list[dict]], reference: str, beta: float, samples: int) -> dict:
    """Metrics per model, paired differences against the first, reward margins against `reference`."""
    scores = {n: pair_scores(lls[n]) for n in names}
    models = {n: {"ref": ref, "metrics": {m: interval(scores[n][m], samples) for m in PAIR_METRICS}} for n, ref in zip(names, refs)}
    differences = {}
    for n in names[1:]:
        differences[n] = {}
        for m in PAIR_METRICS:
            d = paired_bootstrap(scores[names[0]][m], scores[n][m], n=samples, seed=SEED)
            differences[n][m] = {**d, "better": (d["diff"] > 0) == higher_is_better(m)}
    rewards = {}
    for n in names:
        if n == reference:
            continue
        margins = reward_margins(lls[n], lls[reference], beta)
        accuracy = [1.0 if x > 0 else 0.0 if x < 0 else 0.5 for x in margins]
        rewards[n] = {"reward_margin": interval(margins, samples), "reward_accuracy": interval(accuracy, samples)}
    return {"models": models, "differences": differences, "rewards": rewards, "scores": scores}


def evaluate_preferences(
    models: list[str],
    names: list[str],
    examples: list[dict],
    out_dir: Path,
    *,
    source: str,
    reference: str | None = None,
    beta: float = 0.1,
    batch_size: int = 8,
    bootstrap_samples: int = 1000,
) -> dict:
    """Score every pair of `examples` under each model; compare with the first; write the files to `out_dir`."""
    if len(names) != len(models) or len(set(names)) != len(names):
        raise TunelabError(f"give one distinct name per model ({names} for {len(models)} models)")
    rows = pair_rows(examples, source)
    lls = {n: answer_loglikelihoods(ref, rows, batch_size, n) for n, ref in zip(names, models)}
    reference = reference or names[0]
    compared = compare(names, list(map(str, models)), lls, reference, beta, bootstrap_samples)
    result = {
        "created": now(),
        "baseline": names[0],
        "reference": reference,
        "beta": beta,
        "metric_order": list(PAIR_METRICS),
        "models": compared["models"],
        "differences": compared["differences"],
        "rewards": compared["rewards"],
        "n_examples": len(rows),
        "data": {"source": source, "sha256": pairs_hash(rows)},
        "scoring": "summed log-probabilities of each answer's tokens as the chat template renders the assistant turn, after the prompt with the generation prompt",
        "bootstrap": bootstrap_method(bootstrap_samples, SEED),
        "versions": package_versions(),
    }
    per_pair = [
        {
            "id": r["id"],
            "source": r["source"],
            "loglikelihood": {n: lls[n][i] for n in names},
            "scores": {n: {m: compared["scores"][n][m][i] for m in PAIR_METRICS} for n in names},
        }
        for i, r in enumerate(rows)
    ]
    with atomic_dir(Path(out_dir)) as tmp:
        files = PreferenceEvalDir(tmp)
        atomic_write_json(files.preference_json, result)
        atomic_write_jsonl(files.pairs, per_pair)
        atomic_write_text(files.summary_md, summary_markdown(result))
    return result


# ---------------------------------------------------------------- what people read
def reward_lines(result: dict) -> list[str]:
    lines = []
    for name, r in result["rewards"].items():
        m, a = r["reward_margin"], r["reward_accuracy"]
        lines.append(
            f"| {name} | {m['mean']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}] | {a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}] |"
        )
    return lines


def summary_markdown(result: dict) -> str:
    header, rows = table_rows(result)
    lines = [
        "# Preference accuracy on held-out pairs",
        "",
        f"{result['n_examples']} held-out pairs. For each pair: is the chosen answer more likely than the rejected one "
        f"under the model? Mean [95% bootstrap interval]; Δ against {result['baseline']} with a paired bootstrap.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        f"{label('preference_accuracy_per_token')} compares the mean log-probability per token; {label('logp_margin')} is "
        "log p(chosen) − log p(rejected) in nats.",
    ]
    if result["rewards"]:
        lines += [
            "",
            f"## Implicit DPO reward against {result['reference']} (β = {result['beta']:g})",
            "",
            f"| model | {label('reward_margin')} | {label('reward_accuracy')} |",
            "|---|---|---|",
            *reward_lines(result),
            "",
            "The reward margin of a pair is β·[(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))]; "
            "the accuracy is the share of pairs where it is positive.",
        ]
    return "\n".join(lines) + "\n"


def store_rows(result: dict, name: str, out_dir: Path) -> tuple[dict[str, dict], list[tuple[str, str, float]]]:
    """One model's preference metrics as a sweep's results store keeps them: {metric: interval}, [(pair id, metric, value)]."""
    metrics = {m: dict(v) for m, v in result["models"][name]["metrics"].items()}
    scores = [(row["id"], m, float(v)) for row in read_jsonl(PreferenceEvalDir(out_dir).pairs) for m, v in row["scores"][name].items()]
    return metrics, scores


# ---------------------------------------------------------------- the pipeline's stage
def preference_stage(recipe: Recipe, run: RunDir) -> dict | None:
    """`tunelab run`, after the generation metrics: preference accuracy base against tuned, when the test split holds pairs.

    A DPO run continued from an SFT run also scores that SFT model, and its rewards are taken against it
    (DPO's own reference); other runs' rewards are taken against the base.
    """
    examples = read_jsonl(run.split("test"))
    if not has_pairs(examples):
        return None  # nothing to say, so no heading either
    console.rule("[bold]3a. preferences: does the tuned model prefer the chosen answers?")
    models, names = [recipe.model], ["base"]
    start = recipe.train.preference.start_from
    if start and recipe.train.objective != "sft":
        models, names = [*models, start], [*names, "start"]
    models, names = [*models, str(run.root)], [*names, "tuned"]
    result = evaluate_preferences(
        models,
        names,
        examples,
        run.preference_eval,
        source=str(run.split("test")),
        reference=names[-2],
        beta=recipe.train.preference.beta,
        batch_size=recipe.eval.batch_size,
        bootstrap_samples=recipe.eval.bootstrap_samples,
    )
    print_table(rich_table(result, f"{result['n_examples']} held-out pairs — mean [95% CI]; Δ vs base (paired bootstrap)"))
    console.print(f"[green]wrote[/] {run.preference_eval}/: preference.json, pairs.jsonl, summary.md")
    return result
