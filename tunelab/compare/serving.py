"""Quality against what it costs to serve on a CPU: which variant to put behind the chat UI.

The lab's question ("which model works best with your UI for inference on CPUs") has two sides. The
quality side is the sweep's task metric on the held-out set. The cost side is what `tunelab sweep`
measured for each variant's GGUF with a sweep-level `serving:` block (tunelab.serve.cost, one at a time on
an idle machine): generation tokens/s at batch 1, time to first token, peak memory and file size.

The recommendation, in plain words, is the fastest variant whose quality is not measurably below the
best variant's (paired over the same held-out examples, by the one rule of `metric_facts.verdict`): a
faster file that answers as well is the one to serve. The plot puts quality against tokens/s and marks
the Pareto front: variants no other variant beats on both at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from tunelab.compare.tradeoff import non_dominated
from tunelab.evaluate.metric_facts import display_scale, higher_is_better, label, verdict
from tunelab.io import atomic_write_png

TITLE = "Quality against serving cost on this CPU"
INTRO = (
    "Each variant's GGUF (the file `eval.generation_backend: gguf` scores, or a gguf-lora variant's base with its adapter "
    "applied by llama.cpp), timed by `tunelab sweep` through tunelab's "
    "serving path in a process of its own, at batch 1, on an idle machine: generation tokens/s after the first token and "
    "the time to that first token (medians over the first held-out prompts), the process's peak resident memory, and the "
    "files' size. Quality: the task metric on the held-out set, with its 95% interval."
)


@dataclass
class ServingPoint:
    name: str
    quality: dict  # the task metric's mean, low, high
    cost: dict  # the store's serving row: file, bytes, ttft_seconds, tokens_per_second, peak_rss_mib, cpu, load_before, ...
    vs_best: dict | None = None  # paired difference against the best-quality variant (None for that variant itself)


def served_files(file: str) -> str:
    """What was timed, as the table names it: a GGUF file's name, or a gguf-lora folder's base and adapter. Read from
    the stored path alone, so a report rebuilt after the run folders are gone still names the pair."""
    path = Path(file)
    return path.name if path.suffix == ".gguf" else f"{path.name}/ (base + LoRA adapter)"


def pareto_front(points: list[ServingPoint], metric: str) -> set[str]:
    """Variants no other variant beats on quality and tokens/s at once."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    return non_dominated({p.name: (sign * p.quality["mean"], p.cost["tokens_per_second"] or 0.0) for p in points})


def best_quality(points: list[ServingPoint], metric: str) -> ServingPoint:
    return max(points, key=lambda p: p.quality["mean"] if higher_is_better(metric) else -p.quality["mean"])


def recommendation(points: list[ServingPoint], metric: str) -> str:
    """The plain-words choice: the fastest variant not measurably worse than the best one."""
    if not points:
        return "No variant's GGUF has been timed yet: give the sweep a `serving:` block and run `tunelab sweep` on an idle machine."
    name, k = label(metric), display_scale(metric)
    best = best_quality(points, metric)
    as_good = [p for p in points if p is best or (p.vs_best is not None and verdict(metric, p.vs_best) != "worse")]
    pick = max(as_good, key=lambda p: p.cost["tokens_per_second"] or 0.0)
    speed = f"{pick.cost['tokens_per_second']:.1f} tokens/s, first token in {pick.cost['ttft_seconds'] * 1000:,.0f} ms"
    where = f"{pick.cost['peak_rss_mib']:,.0f} MiB peak, {pick.cost['bytes'] / 2**20:,.0f} MiB on disk"
    text = f"Serve `{pick.name}` ({served_files(pick.cost['file'])}): {speed}, {where}"
    if pick is best:
        return text + f"; it is also the best on {name} ({pick.quality['mean'] * k:.2f}), so nothing faster answers as well."
    d = pick.vs_best
    return (
        text + f". Its {name} ({pick.quality['mean'] * k:.2f}) is not measurably below the best variant's, `{best.name}` "
        f"({best.quality['mean'] * k:.2f}; difference {d['diff'] * k:+.2f}, 95% CI {d['low'] * k:+.2f}..{d['high'] * k:+.2f}), "
        f"which serves at {best.cost['tokens_per_second']:.1f} tokens/s."
    )


def table(points: list[ServingPoint], metric: str, front: set[str]) -> tuple[list[str], list[list[str]]]:
    k = display_scale(metric)
    header = [
        "variant",
        "GGUF",
        f"{label(metric)} (95% CI)",
        "tokens/s (batch 1)",
        "first token (ms)",
        "peak RSS (MiB)",
        "size (MiB)",
        "Pareto front",
        "CPU, load before",
    ]
    body = [
        [
            p.name,
            served_files(p.cost["file"]),
            f"{p.quality['mean'] * k:.2f} [{p.quality['low'] * k:.2f}, {p.quality['high'] * k:.2f}]",
            f"{p.cost['tokens_per_second']:.1f}" if p.cost["tokens_per_second"] else "-",
            f"{p.cost['ttft_seconds'] * 1000:,.0f}",
            f"{p.cost['peak_rss_mib']:,.0f}",
            f"{p.cost['bytes'] / 2**20:,.0f}",
            "yes" if p.name in front else "",
            f"{p.cost['cpu']}, {p.cost['load_before']:.2f}",
        ]
        for p in sorted(points, key=lambda p: -(p.cost["tokens_per_second"] or 0.0))
    ]
    return header, body


def plot(points: list[ServingPoint], metric: str, front: set[str], path: Path) -> Path | None:
    """Quality (y, with its 95% interval) against generation tokens/s (x), the Pareto front joined."""
    if not points:
        return None
    k = display_scale(metric)
    fig = Figure(figsize=(7, 5))  # a Figure of its own, not pyplot's global state
    ax = fig.subplots()
    # labels alternate above and below along the speed axis: variants of one model sit close together
    for i, p in enumerate(sorted(points, key=lambda p: p.cost["tokens_per_second"] or 0.0)):
        x, y = p.cost["tokens_per_second"] or 0.0, p.quality["mean"] * k
        yerr = [[max(0.0, (p.quality["mean"] - p.quality["low"]) * k)], [max(0.0, (p.quality["high"] - p.quality["mean"]) * k)]]
        on_front = p.name in front
        ax.errorbar(x, y, yerr=yerr, fmt="*" if on_front else "o", markersize=12 if on_front else 6, color="#1e88e5", capsize=3)
        ax.annotate(
            f"{p.name} ({p.cost['bytes'] / 2**20:,.0f} MiB)",
            (x, y),
            textcoords="offset points",
            xytext=(6, 6 if i % 2 else -12),
            fontsize=8,
        )
    ordered = sorted((p for p in points if p.name in front), key=lambda p: p.cost["tokens_per_second"] or 0.0)
    if len(ordered) > 1:
        ax.plot([p.cost["tokens_per_second"] or 0.0 for p in ordered], [p.quality["mean"] * k for p in ordered], "--", color="#455a64")
    lower = "" if higher_is_better(metric) else ", lower is better"
    ax.set_xlabel("generation tokens/s at batch 1 on this CPU")
    ax.set_ylabel(f"{label(metric)}{' (points)' if k == 100.0 else ''}{lower}")
    ax.set_title("Quality against serving speed (95% CI; ★ Pareto front; label: GGUF size)", fontsize=9)
    return atomic_write_png(fig, path)
