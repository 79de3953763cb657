"""`tunelab compare`: the results table, a plot per metric and a plain-words report.

Everything is computed from the results store, so `compare` works on a finished or
half-finished sweep and on a store copied from other machines. Each variant is compared
with the baseline variant on the same held-out example ids (paired bootstrap); repeats over
seeds are averaged per example first, so a variant's interval covers example noise and the
seed spread is shown beside it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rich.markup import escape
from rich.table import Table

from tunelab.compare import serving, tradeoff
from tunelab.compare.spec import load_sweep
from tunelab.compare.store import ResultsStore, store_path
from tunelab.compare.wording import change_phrase, changes_phrase
from tunelab.errors import ConfigError
from tunelab.evaluate import human
from tunelab.evaluate.code import KIND as CODE_KIND
from tunelab.evaluate.code import trained_on_metrics
from tunelab.evaluate.metric_facts import ALPHA, higher_is_better, reported, split_benchmark_metric, verdict
from tunelab.evaluate.metric_facts import display_scale as scale
from tunelab.evaluate.metric_facts import label as metric_name
from tunelab.evaluate.stats import bootstrap_ci, paired_bootstrap
from tunelab.io import atomic_write_png, atomic_write_text
from tunelab.progress import console, print_table, results
from tunelab.report import benchmark_results
from tunelab.runs import RunDir

BOOTSTRAP_SAMPLES = 2000
HUMAN_COLUMN = "human win rate vs model 1"
SEED = 0


# ---------------------------------------------------------------- statistics (the evaluate stage's)
def interval(values: list[float]) -> tuple[float, float]:
    ci = bootstrap_ci(values, n=BOOTSTRAP_SAMPLES, seed=SEED)
    return ci["low"], ci["high"]


def paired(variant: list[float], baseline: list[float]) -> dict:
    """Paired bootstrap of variant − baseline over the same examples: diff, low, high, p_value."""
    return paired_bootstrap(baseline, variant, n=BOOTSTRAP_SAMPLES, seed=SEED)


# ---------------------------------------------------------------- aggregation
@dataclass
class Row:
    name: str
    kind: str  # "variant" or "reference"
    is_baseline: bool
    kinds: list[str]  # ["model"], ["data"], both, or [] for the baseline/reference
    changes: dict[str, list]  # path -> [baseline value, this value]
    seeds: list[int]
    per_example: dict[str, dict[str, float]]  # metric -> example id -> value (mean over seeds)
    seed_means: dict[str, list[float]]  # metric -> the mean of each seed
    train_seconds: float | None
    tokens_per_second: float | None
    model: str | None = None  # the base model (a variant's recipe model, or the reference model)
    stats: dict[str, dict] = field(default_factory=dict)  # metric -> mean, low, high, seed_sd
    deltas: dict[str, dict] = field(default_factory=dict)  # metric -> diff, low, high, p_value, n
    vs_untuned: dict[str, dict] = field(default_factory=dict)  # metric -> paired difference against its untuned base
    run_dirs: list[str] = field(default_factory=list)  # where people's votes on this variant are (eval/human_votes.jsonl)
    trained_on: set[str] = field(default_factory=set)  # metrics measured on problems its training data held (code.trained_on_metrics)


def metrics_trained_on(run_dirs: list[str]) -> set[str]:
    """The metrics any of these runs' code benchmarks measured on problems its training data held."""
    results = [result for d in run_dirs for _, result in benchmark_results(RunDir(d), CODE_KIND)]
    return set().union(*map(trained_on_metrics, results))


def _avg(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def load_rows(store: ResultsStore, config_ids: set[str] | None = None) -> tuple[list[Row], list[str]]:
    """One row per variant (seeds merged) and per reference model; plus the variants not finished yet."""
    groups: dict[str, list[dict]] = {}
    unfinished = []
    for run in store.runs():
        if run["kind"] == "variant" and config_ids is not None and run["config_id"] not in config_ids:
            continue
        if run["status"] != "done":
            unfinished.append(f"{run['variant']} (seed {run['seed']}: {run['status']})" if run["seed"] is not None else run["variant"])
            continue
        key = run["config_id"] if run["kind"] == "variant" else run["id"]
        groups.setdefault(key, []).append(run)
    rows = []
    for runs in groups.values():
        first = runs[0]
        settings = first.get("settings") or {}
        per_seed = [store.scores(r["id"]) for r in runs]
        metrics = sorted(set.intersection(*[set(s) for s in per_seed])) if per_seed else []
        per_example, seed_means = {}, {}
        for m in metrics:
            ids = set.intersection(*[set(s[m]) for s in per_seed])
            per_example[m] = {i: mean(s[m][i] for s in per_seed) for i in sorted(ids)}
            seed_means[m] = [mean(s[m].values()) for s in per_seed if s[m]]
        rows.append(
            Row(
                name=first["variant"],
                kind=first["kind"],
                is_baseline=bool(settings.get("baseline")),
                kinds=settings.get("kinds", []),
                changes=settings.get("changes", {}),
                seeds=sorted(r["seed"] for r in runs if r["seed"] is not None),
                per_example=per_example,
                seed_means=seed_means,
                train_seconds=_avg([r["train_seconds"] for r in runs]),
                tokens_per_second=_avg([r["tokens_per_second"] for r in runs]),
                model=settings.get("model") if first["kind"] == "reference" else (first.get("recipe") or {}).get("model"),
                run_dirs=[r["run_dir"] for r in runs if r.get("run_dir")],
                trained_on=metrics_trained_on([r["run_dir"] for r in runs if r.get("run_dir") and r["kind"] == "variant"]),
            )
        )
    rows.sort(key=lambda r: (r.kind != "reference", not r.is_baseline))
    return rows, unfinished


def paired_on_shared_ids(row: Row, other: Row, metric: str) -> dict | None:
    """Paired difference row − other over the example ids both have (None with fewer than two)."""
    values, base_values = row.per_example[metric], other.per_example.get(metric, {})
    ids = sorted(set(values) & set(base_values))
    if len(ids) < 2:
        return None
    d = paired([values[i] for i in ids], [base_values[i] for i in ids])
    return {"diff": d["diff"], "low": d["low"], "high": d["high"], "p_value": d["p_value"], "n": len(ids)}


def fine_tuning_effects(rows: list[Row]) -> None:
    """Each tuned variant against its base model untuned, on the examples (and benchmark questions) both have."""
    references = {r.model: r for r in rows if r.kind == "reference" and r.model}
    for row in rows:
        untuned = references.get(row.model)
        if row.kind != "variant" or untuned is None:
            continue
        for m in row.per_example:
            d = paired_on_shared_ids(row, untuned, m)
            if d:
                row.vs_untuned[m] = {**d, "trained_on": m in row.trained_on}


def compute_stats(rows: list[Row]) -> Row | None:
    """Fill each row's metric intervals and its paired difference against the baseline variant."""
    baseline = next((r for r in rows if r.is_baseline), None)
    for row in rows:
        for m, values in row.per_example.items():
            vals = list(values.values())
            low, high = interval(vals) if len(vals) > 1 else (math.nan, math.nan)
            row.stats[m] = {
                "mean": mean(vals),
                "low": low,
                "high": high,
                "n": len(vals),
                "seed_sd": stdev(row.seed_means[m]) if len(row.seed_means.get(m, [])) > 1 else None,
            }
        if baseline is None or row is baseline:
            continue
        for m in row.per_example:
            d = paired_on_shared_ids(row, baseline, m)
            if d:
                row.deltas[m] = {**d, "trained_on": m in row.trained_on | baseline.trained_on}
    fine_tuning_effects(rows)
    return baseline


# ---------------------------------------------------------------- words


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


FOR_CHOOSING = "the half settings are chosen on, not a finding"  # what a dev-split metric's sentence says instead of a verdict
TRAINED_ON = "measured on problems a tune here trained on (its leakage check), not a finding"  # Row.trained_on's sentence


def is_finding(metric: str, d: dict) -> bool:
    """Whether a paired difference is a finding: not a dev split settings are chosen on, and measured on no problem
    that either side's training data held."""
    return reported(metric) and not d.get("trained_on")


def no_finding_words(metric: str, d: dict) -> str | None:
    return FOR_CHOOSING if not reported(metric) else TRAINED_ON if d.get("trained_on") else None


def sentence(row: Row, metric: str, k: float) -> str:
    d = row.deltas[metric]
    unit = " points" if k == 100.0 else ""
    diff, lo, hi = d["diff"] * k, d["low"] * k, d["high"] * k
    ci = f"(95% CI {lo:+.2f}..{hi:+.2f}, {_p(d['p_value'])})"
    v = verdict(metric, d)
    lower = "" if higher_is_better(metric) else ", lower is better"
    what = changes_phrase(row.changes)
    what = what[0].upper() + what[1:]
    name = metric_name(metric)
    if words := no_finding_words(metric, d):  # a dev split, or problems a tune trained on: never a finding
        return f"{what} changed {name} by {diff:+.2f}{unit} {ci}: {words}."
    if v == "better":
        return f"{what} improved {name} by {diff:+.2f}{unit} {ci}{lower}: a real improvement."
    if v == "worse":
        return f"{what} made {name} worse by {diff:+.2f}{unit} {ci}{lower}: a real degradation."
    return f"{what} changed {name} by {diff:+.2f}{unit} {ci}: no measurable difference."


def overall(row: Row) -> str:
    verdicts = {m: verdict(m, d) for m, d in row.deltas.items() if is_finding(m, d)}
    better = [m for m, v in verdicts.items() if v == "better"]
    worse = [m for m, v in verdicts.items() if v == "worse"]
    if better and not worse:
        return "improved"
    if worse and not better:
        return "worse"
    if better and worse:
        return "mixed"
    return "no difference"


SUMMARY_HEADS = {  # a section's summary line per group of changes (`overall`)
    "improved": "Improved the model: ",
    "worse": "Made it worse: ",
    "mixed": "Mixed (better on some metrics, worse on others): ",
    "no difference": "Did not measurably change it: ",
}
SECTIONS = [("model", "Model-centric changes"), ("data", "Data-centric changes"), ("both", "Changes of both kinds")]


def section_of(row: Row) -> str:
    kinds = set(row.kinds)
    return "both" if kinds == {"model", "data"} else (next(iter(kinds)) if kinds else "model")


def fine_tuning_sentence(row: Row, metric: str) -> str:
    d, k = row.vs_untuned[metric], scale(metric)
    unit = " points" if k == 100.0 else ""
    ci = f"(95% CI {d['low'] * k:+.2f}..{d['high'] * k:+.2f}, {_p(d['p_value'])})"
    words = {"better": "a real improvement", "worse": "a real degradation", "same": "no measurable difference"}[verdict(metric, d)]
    words = no_finding_words(metric, d) or words
    return f"Fine-tuning {row.model} (`{row.name}`) changed {metric_name(metric)} by {d['diff'] * k:+.2f}{unit} over the untuned model {ci}: {words}."


TASK_WORDS = {"better": "better", "worse": "worse", "same": "no measurable difference"}


def on_task_metric(deltas: dict[str, dict], task_metric: str | None, group: str) -> str:
    """`, though on TASK, the sweep's task metric: VERDICT` where the task metric's verdict is not the group's
    (a change that improved a text metric while the code it writes passed no more tests); else nothing."""
    if not task_metric or task_metric not in deltas:
        return ""
    task = verdict(task_metric, deltas[task_metric])
    if group in ("mixed", "partly beat"):  # which way the metric that matters went
        return f"; on {metric_name(task_metric)}, the sweep's task metric: {TASK_WORDS[task]}"
    agreeing = {
        "improved": {"better"},
        "beat": {"better"},
        "worse": {"worse"},
        "did not beat": {"same", "worse"},
        "no difference": {"same"},
    }
    if task in agreeing[group]:
        return ""
    return f", though on {metric_name(task_metric)}, the sweep's task metric: {TASK_WORDS[task]}"


def fine_tuning_findings(rows: list[Row], task_metric: str | None = None) -> tuple[str, list[str], list[tuple[str, str]]] | None:
    """Did fine-tuning itself beat the untuned base model (the baseline, and each base-model variant)?
    Variants that change other settings are weighed against their base in the gain-against-cost section."""
    tuned = [r for r in rows if r.vs_untuned and (r.is_baseline or set(r.changes) <= {"model"})]
    if not tuned:
        return None
    summary = []
    for r in tuned:
        verdicts = {verdict(m, d) for m, d in r.vs_untuned.items() if is_finding(m, d)}
        state = "beat" if verdicts == {"better"} else "did not beat" if "better" not in verdicts else "partly beat"
        summary.append(f"The tuned `{r.name}` {state} its untuned base model {r.model}{on_task_metric(r.vs_untuned, task_metric, state)}.")
    sentences = [(verdict(m, r.vs_untuned[m]), fine_tuning_sentence(r, m)) for r in tuned for m in sorted(r.vs_untuned)]
    return "Fine-tuning itself: tuned against the untuned base model", summary, sentences


def findings(rows: list[Row], baseline: Row, task_metric: str | None = None) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
    """(section title, summary lines, per-metric (verdict, sentence)): fine-tuning itself, then each kind of change;
    a summary says where the sweep's task metric disagrees with its verdict."""
    out = [section for section in [fine_tuning_findings(rows, task_metric)] if section]
    for key, title in SECTIONS:
        members = [r for r in rows if r.kind == "variant" and r is not baseline and section_of(r) == key and r.deltas]
        if not members:
            continue
        summary = []
        groups = {group: [] for group in SUMMARY_HEADS}
        for r in members:
            groups[overall(r)].append(r)
        for group, head in SUMMARY_HEADS.items():
            if groups[group]:
                named = [f"{changes_phrase(r.changes)} (`{r.name}`){on_task_metric(r.deltas, task_metric, group)}" for r in groups[group]]
                summary.append(head + "; ".join(named) + ".")
        sentences = [(verdict(m, r.deltas[m]), sentence(r, m, scale(m))) for r in members for m in sorted(r.deltas)]
        out.append((title, summary, sentences))
    return out


# ---------------------------------------------------------------- table
def metrics_of(rows: list[Row]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        for m in r.stats:
            if m not in seen:
                seen.append(m)
    return seen


def table_rows(rows: list[Row], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "changed setting"]
    for m in metrics:
        header += [f"{metric_name(m)} (95% CI)", f"Δ {metric_name(m)} vs baseline (p)"]
    people = {r.name: human.run_win_rate(r.run_dirs) for r in rows}
    if any(people.values()):
        header.append(HUMAN_COLUMN)
    header += ["train s", "tokens/s", "seeds"]
    body = []
    for r in rows:
        if r.kind == "reference":
            changed = "untuned base model (reference)"
        elif r.is_baseline:
            changed = "(baseline)"
        else:
            changed = "; ".join(change_phrase(k, a, b, plain=True) for k, (a, b) in r.changes.items())
        cells = [r.name, changed]
        for m in metrics:
            k = scale(m)
            s = r.stats.get(m)
            if s:
                sd = f" ±{s['seed_sd'] * k:.2f} sd" if s.get("seed_sd") is not None else ""
                cells.append(f"{s['mean'] * k:.2f} [{s['low'] * k:.2f}, {s['high'] * k:.2f}]{sd}")
            else:
                cells.append("-")
            d = r.deltas.get(m)
            cells.append(f"{d['diff'] * k:+.2f} [{d['low'] * k:+.2f}, {d['high'] * k:+.2f}] ({_p(d['p_value'])})" if d else "-")
        if HUMAN_COLUMN in header:
            cells.append(human.format_win_rate(people[r.name]) if people[r.name] else "-")
        cells.append(f"{r.train_seconds:.0f}" if r.train_seconds is not None else "-")
        cells.append(f"{r.tokens_per_second:.0f}" if r.tokens_per_second is not None else "-")
        cells.append(",".join(map(str, r.seeds)) or "-")
        body.append(cells)
    return header, body


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- plots
def plot_metric(metric: str, rows: list[Row], path: Path) -> Path:
    k = scale(metric)
    shown = [r for r in rows if metric in r.stats]
    colours = {"reference": "#9e9e9e", "baseline": "#455a64", "model": "#1e88e5", "data": "#43a047", "both": "#8e24aa"}
    means = [r.stats[metric]["mean"] * k for r in shown]
    lows = [
        max(0.0, (r.stats[metric]["mean"] - r.stats[metric]["low"]) * k) if not math.isnan(r.stats[metric]["low"]) else 0 for r in shown
    ]
    highs = [
        max(0.0, (r.stats[metric]["high"] - r.stats[metric]["mean"]) * k) if not math.isnan(r.stats[metric]["high"]) else 0 for r in shown
    ]
    colour = [
        colours["reference"] if r.kind == "reference" else colours["baseline"] if r.is_baseline else colours[section_of(r)] for r in shown
    ]
    # a Figure of its own (not pyplot's global state): no GUI backend, safe in any thread
    fig = Figure(figsize=(max(5, 1.2 * len(shown) + 2), 4))
    ax = fig.subplots()
    ax.bar(range(len(shown)), means, yerr=[lows, highs], capsize=4, color=colour)
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([r.name for r in shown], rotation=30, ha="right", fontsize=8)
    unit = " (points)" if k == 100.0 else ""
    ax.set_ylabel(metric_name(metric) + unit + ("" if higher_is_better(metric) else " — lower is better"))
    ax.set_title(f"{metric_name(metric)} per variant (95% CI)", fontsize=10)
    legend = {"reference": "base model", "baseline": "baseline", "model": "model-centric", "data": "data-centric", "both": "both kinds"}
    used = {"reference" if r.kind == "reference" else "baseline" if r.is_baseline else section_of(r) for r in shown}
    ax.legend(handles=[Patch(color=colours[k], label=label) for k, label in legend.items() if k in used], fontsize=7, loc="best")
    return atomic_write_png(fig, path)


# ---------------------------------------------------------------- report
def write_csv(path: Path, header: list[str], body: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *body])
    atomic_write_text(path, buf.getvalue())


def build_report(store: ResultsStore, out: Path, config_ids: set[str] | None = None, title: str | None = None) -> dict:
    """Write results.csv, plots/<metric>.png, report.md and report.html into `out`; return the numbers."""
    rows, unfinished = load_rows(store, config_ids)
    if not [r for r in rows if r.kind == "variant"]:
        raise ConfigError(f"{store.path}: no finished variants yet; run `tunelab sweep` first")
    baseline = compute_stats(rows)
    metrics = metrics_of(rows)
    header, body = table_rows(rows, metrics)
    name = title or store.get_meta("sweep_name") or out.name

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", header, body)
    plots = {m: plot_metric(m, rows, out / "plots" / f"{m}.png") for m in metrics}
    cost = gain_against_cost(store, rows, metrics, out)
    found = findings(rows, baseline, cost["task_metric"]) if baseline else []
    serving_cost = quality_against_serving_cost(store, rows, cost["task_metric"], out)
    sections = [cost] + ([serving_cost] if serving_cost else [])

    intro = _intro(store, baseline)
    atomic_write_text(out / "report.md", _markdown(name, intro, unfinished, found, sections, header, body, metrics))
    atomic_write_text(out / "report.html", _html(name, intro, unfinished, found, sections, header, body, plots))
    return {
        "gain_against_cost": cost,
        "serving_cost": serving_cost,
        "rows": rows,
        "baseline": baseline,
        "metrics": metrics,
        "header": header,
        "body": body,
        "findings": found,
        "unfinished": unfinished,
        "out": out,
    }


def gain_against_cost(store: ResultsStore, rows: list[Row], metrics: list[str], out: Path) -> dict:
    """Every variant's task gain and general-ability change against its untuned base: words, table, plot, tradeoff.csv."""
    task_metric = store.get_meta("task_metric") or next((m for m in metrics if not split_benchmark_metric(m)), metrics[0])
    general_metric = store.get_meta("general_metric")
    points = [
        tradeoff.Point(r.name, r.changes, r.vs_untuned[task_metric], r.vs_untuned.get(general_metric) if general_metric else None)
        for r in rows
        if r.kind == "variant" and task_metric in r.vs_untuned
    ]
    front = tradeoff.pareto_front(points, task_metric)
    header, body = tradeoff.table(points, task_metric, general_metric, front)
    write_csv(out / "tradeoff.csv", header, body)
    plot = tradeoff.plot(points, task_metric, general_metric, front, out / "plots" / "gain_vs_cost.png") if general_metric else None
    sentence = tradeoff.verdict_sentence(points, task_metric, general_metric)
    return {
        "title": COST_TITLE,
        "intro": COST_INTRO,
        "task_metric": task_metric,
        "general_metric": general_metric,
        "sentence": sentence,
        "header": header,
        "body": body,
        "plot": plot,
    }


def quality_against_serving_cost(store: ResultsStore, rows: list[Row], task_metric: str, out: Path) -> dict | None:
    """Each timed variant's quality beside what its GGUF costs to serve: words, table, plot, serving.csv (None: the
    sweep has no `serving:` block and nothing was timed)."""
    timed = {}
    for run in store.runs("variant"):
        cost = store.serving(run["id"])
        if cost is not None:
            timed.setdefault(run["variant"], cost)  # a variant's seeds train the same model: its first timed run
    if not timed and store.get_meta("serving") is None:
        return None
    by_name = {r.name: r for r in rows if r.kind == "variant" and r.name in timed and task_metric in r.stats}
    points = [serving.ServingPoint(name, row.stats[task_metric], timed[name]) for name, row in by_name.items()]
    if points:
        best = serving.best_quality(points, task_metric)
        for p in points:
            p.vs_best = None if p is best else paired_on_shared_ids(by_name[p.name], by_name[best.name], task_metric)
    front = serving.pareto_front(points, task_metric)
    header, body = serving.table(points, task_metric, front)
    write_csv(out / "serving.csv", header, body)
    return {
        "title": serving.TITLE,
        "intro": serving.INTRO,
        "sentence": serving.recommendation(points, task_metric),
        "header": header,
        "body": body,
        "plot": serving.plot(points, task_metric, front, out / "plots" / "quality_vs_speed.png"),
    }


def _intro(store: ResultsStore, baseline: Row | None) -> str:
    heldout_n = store.get_meta("heldout_size")
    heldout_hash = store.get_meta("heldout_hash") or ""
    return (
        f"Every variant was trained with the same base recipe except the settings shown, and scored on the same "
        f"{heldout_n} held-out examples (content hash `{heldout_hash[:12]}`), fixed before any variant ran. "
        f"Intervals are 95% bootstrap intervals over examples; Δ is the paired difference against the baseline "
        f"variant `{baseline.name if baseline else '?'}` on the same examples, with a paired-bootstrap p-value. "
        f"A change counts as real when p < {ALPHA} and its interval excludes zero."
    )


COST_TITLE = "Gain against cost"
COST_INTRO = (
    "Each variant against its own untuned base model, on the same held-out examples and the same benchmark questions "
    "(paired bootstrap, 95% CI). General ability counts as kept when its change is not a measurable loss. "
    "The Pareto front: variants no other variant beats on both at once."
)


def _markdown(name, intro, unfinished, found, sections, header, body, metrics) -> str:
    md = [f"# Sweep report: {name}", "", intro, ""]
    if unfinished:
        md += [f"Not finished yet (left out): {', '.join(unfinished)}.", ""]
    md += ["## Findings", ""]
    if not found:
        md += ["Only the baseline has finished; nothing to compare yet.", ""]
    for title, summary, sentences in found:
        md += [f"### {title}", ""] + [line for s in summary for line in (f"**{s}**", "")] + [f"- {text}" for _, text in sentences] + [""]
    for sec in sections:  # gain against cost; quality against serving cost
        md += [f"## {sec['title']}", "", f"**{sec['sentence']}**", "", sec["intro"], ""]
        if sec["body"]:
            md += [markdown_table(sec["header"], sec["body"]), ""]
        if sec["plot"]:
            md += [f"![{sec['title']}](plots/{sec['plot'].name})", ""]
    md += ["## Results", "", markdown_table(header, body), ""]
    md += ["## Plots", ""] + [f"![{metric_name(m)}](plots/{m}.png)" for m in metrics] + [""]
    return "\n".join(md)


HTML_CLASS = {"better": "better", "worse": "worse", "same": ""}  # verdict -> CSS class of its sentence


def _html(name, intro, unfinished, found, sections, header, body, plots: dict[str, Path]) -> str:
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report: {html.escape(name)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 6px;text-align:left}"
        "th{background:#f3f3f3}.better{color:#1b5e20}.worse{color:#b71c1c}img{max-width:100%}</style></head><body>",
        f"<h1>Sweep report: {html.escape(name)}</h1><p>{html.escape(intro)}</p>",
    ]
    if unfinished:
        h.append(f"<p>Not finished yet (left out): {html.escape(', '.join(unfinished))}.</p>")
    h.append("<h2>Findings</h2>")
    for title, summary, sentences in found:
        h.append(f"<h3>{html.escape(title)}</h3>" + "".join(f"<p><b>{html.escape(s.replace('`', ''))}</b></p>" for s in summary))
        h.append("<ul>" + "".join(f"<li class='{HTML_CLASS[v]}'>{html.escape(text)}</li>" for v, text in sentences) + "</ul>")
    for sec in sections:
        h.append(f"<h2>{sec['title']}</h2><p><b>{html.escape(sec['sentence'].replace('`', ''))}</b></p><p>{html.escape(sec['intro'])}</p>")
        if sec["body"]:
            h.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in sec["header"]) + "</tr>")
            h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in sec["body"]]
            h.append("</table>")
        if sec["plot"]:
            data = base64.b64encode(sec["plot"].read_bytes()).decode()
            h.append(f"<p><img alt='{sec['title']}' src='data:image/png;base64,{data}'></p>")
    h.append("<h2>Results</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>")
    h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
    h.append("</table><h2>Plots</h2>")
    for m, p in plots.items():
        data = base64.b64encode(p.read_bytes()).decode()
        h.append(f"<p><img alt='{html.escape(metric_name(m))}' src='data:image/png;base64,{data}'></p>")
    h.append("</body></html>")
    return "\n".join(h)


def print_results(result: dict) -> None:
    """The results on the terminal: one narrow table per metric, then timings, then the findings."""

    rows: list[Row] = result["rows"]
    for m in result["metrics"]:
        k = scale(m)
        unit = " (points)" if k == 100.0 else ""
        table = Table(
            title=f"{metric_name(m)}{unit}: 95% CI; Δ vs baseline, paired bootstrap" + ("" if higher_is_better(m) else "; lower is better")
        )
        for c in ["variant", "mean [95% CI]", "Δ [95% CI]", "p"]:
            table.add_column(c, overflow="fold")
        for r in rows:
            s_ = r.stats.get(m)
            d = r.deltas.get(m)
            table.add_row(
                r.name,
                f"{s_['mean'] * k:.2f} [{s_['low'] * k:.2f}, {s_['high'] * k:.2f}]" if s_ else "-",
                f"{d['diff'] * k:+.2f} [{d['low'] * k:+.2f}, {d['high'] * k:+.2f}]" if d else "-",
                _p(d["p_value"]) if d else "-",
            )
        print_table(table)
    table = Table(title="training")
    for c in ["variant", "changed setting", "train s", "tokens/s", "seeds"]:
        table.add_column(c, overflow="fold")
    for cells in result["body"]:
        table.add_row(cells[0], escape(cells[1]), *cells[-3:])  # escaped: a list value like [gguf-q8_0] is no style tag
    print_table(table)
    if HUMAN_COLUMN in result["header"]:
        column = result["header"].index(HUMAN_COLUMN)
        table = Table(title=f"{HUMAN_COLUMN}: blind votes cast in `tunelab serve`'s Evaluate tab ({human.INTERVAL})")
        for c in ["variant", "win rate [95% CI] (votes)"]:
            table.add_column(c, overflow="fold")
        for cells in result["body"]:
            table.add_row(cells[0], cells[column])
        print_table(table)
    subtitles = {COST_TITLE: "each variant against its untuned base model, paired bootstrap", serving.TITLE: "batch 1, idle machine"}
    for sec in filter(None, [result["gain_against_cost"], result.get("serving_cost")]):
        if sec["body"]:
            table = Table(title=f"{sec['title'].lower()}: {subtitles[sec['title']]}")
            for c in sec["header"]:
                table.add_column(c, overflow="fold")
            for cells in sec["body"]:
                table.add_row(*map(escape, cells))
            print_table(table)
        results.print(escape(sec["sentence"].replace("`", "")))
    for title, summary, sentences in result["findings"]:  # results too: stdout, beside the tables
        results.print(f"[bold]{title}[/]")
        for s_ in summary:
            results.print("  " + escape(s_.replace("`", "")))
        for _, text in sentences:
            results.print("  - " + escape(text))


def compare_cli(sweep_file: str | Path, out: str | Path | None = None) -> dict:
    """Report on a sweep, given its YAML file or its output folder (which holds results.sqlite)."""
    target = Path(sweep_file)
    config_ids = None
    if target.is_dir():
        folder, title = target, None
    else:
        sweep = load_sweep(target)
        folder, title = sweep.folder, sweep.name
        config_ids = {v.config_id for v in sweep.variants}
    if not store_path(folder).is_file():
        raise ConfigError(f"{folder}: no results store (results.sqlite); run `tunelab sweep {sweep_file}` first")
    out_dir = Path(out) if out else folder / "report"
    with ResultsStore(store_path(folder)) as store:
        result = build_report(store, out_dir, config_ids=config_ids, title=title)
    print_results(result)
    console.print(
        f"[green]report:[/] {out_dir / 'report.md'}, {out_dir / 'report.html'}, {out_dir / 'results.csv'}, plots in {out_dir / 'plots'}"
    )
    return result
