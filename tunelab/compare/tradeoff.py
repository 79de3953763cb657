"""Gain against cost: each variant's task gain over its untuned base model beside its change in general ability.

Fine-tuning for one task can cost what the model could do before: the translation recipe gained about
10 BLEU on FLORES and lost about 14 points of ARC-Easy accuracy. `tunelab compare` therefore shows, for
every variant, both differences against the variant's own untuned base model (paired bootstraps over
the same held-out examples and the same benchmark questions), plots one against the other with the
Pareto front marked, and names in plain words the variant with the best task gain whose general
ability is not measurably worse: its difference is not a real loss by the one rule of
`metric_facts.verdict` (its interval includes 0 or lies above it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from tunelab.compare.wording import changes_phrase
from tunelab.evaluate.metric_facts import display_scale, higher_is_better, label, verdict
from tunelab.io import atomic_write_png


@dataclass
class Point:
    """One variant: its paired differences against its untuned base model (diff, low, high, p_value, n)."""

    name: str
    changes: dict[str, list]  # what it changed against the sweep's baseline (empty: the baseline itself)
    task: dict
    general: dict | None  # None: the variant has no general-ability score


def gain(task_metric: str, difference: dict) -> float:
    """The task difference with better as larger (perplexity falls when it improves)."""
    return difference["diff"] if higher_is_better(task_metric) else -difference["diff"]


def non_dominated(coordinates: dict[str, tuple[float, float]]) -> set[str]:
    """Names no other name beats on both coordinates at once (larger is better; ties on both beat nothing)."""
    return {
        name
        for name, (a, b) in coordinates.items()
        if not any(x >= a and y >= b and (x > a or y > b) for other, (x, y) in coordinates.items() if other != name)
    }


def pareto_front(points: list[Point], task_metric: str) -> set[str]:
    """Variants no other variant beats on task gain and general ability at once."""
    return non_dominated({p.name: (gain(task_metric, p.task), p.general["diff"]) for p in points if p.general is not None})


def keeps_general_ability(general_metric: str, p: Point) -> bool:
    return p.general is not None and verdict(general_metric, p.general) != "worse"


def interval_text(metric: str, d: dict) -> str:
    k = display_scale(metric)
    unit = " points" if k == 100.0 else ""
    return f"{d['diff'] * k:+.2f}{unit} (95% CI {d['low'] * k:+.2f}..{d['high'] * k:+.2f})"


def cell_text(metric: str, d: dict) -> str:
    k = display_scale(metric)
    return f"{d['diff'] * k:+.2f} [{d['low'] * k:+.2f}, {d['high'] * k:+.2f}]"


def _what(p: Point) -> str:
    return "the baseline recipe" if not p.changes else changes_phrase(p.changes)


def verdict_sentence(points: list[Point], task_metric: str, general_metric: str | None) -> str:
    """The plain-words answer: which variant gains most on the task without a measurable loss of general ability."""
    task_name = label(task_metric)
    if not points:
        return f"No variant has a {task_name} score against its untuned base model yet, so no gain can be weighed against a cost."
    if general_metric is None or all(p.general is None for p in points):
        return (
            "General ability was not measured in this sweep (the recipe's eval.general_ability is null, or its benchmark "
            "file is missing), so the task gains cannot be weighed against it."
        )
    general_name = label(general_metric)
    scored = [p for p in points if p.general is not None]
    keepers = [p for p in scored if keeps_general_ability(general_metric, p)]
    if not keepers:
        least = max(scored, key=lambda p: p.general["diff"])
        return (
            f"No variant keeps general ability: every one lost {general_name} measurably against its untuned base model. "
            f"The smallest loss is `{least.name}` ({_what(least)}): {general_name} {interval_text(general_metric, least.general)}, "
            f"with {task_name} {interval_text(task_metric, least.task)}."
        )
    best = max(keepers, key=lambda p: gain(task_metric, p.task))
    task_real = verdict(task_metric, best.task) == "better"
    return (
        f"The best task gain that keeps general ability: `{best.name}` ({_what(best)}), {task_name} "
        f"{interval_text(task_metric, best.task)} over its untuned base model"
        + ("" if task_real else ", not a measurable gain")
        + f", while {general_name} changed by {interval_text(general_metric, best.general)}, not a measurable loss."
    )


def table(points: list[Point], task_metric: str, general_metric: str | None, front: set[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: both differences against the untuned base, whether general ability was kept, the front."""
    general_name = label(general_metric) if general_metric else "general ability"
    header = [
        "variant",
        f"Δ {label(task_metric)} vs untuned (95% CI)",
        f"Δ {general_name} vs untuned (95% CI)",
        "general ability",
        "Pareto front",
    ]
    words = {"better": "gained", "same": "kept (no measurable change)", "worse": "lost"}
    body = []
    for p in points:
        general = p.general is not None and general_metric is not None
        body.append(
            [
                p.name,
                cell_text(task_metric, p.task),
                cell_text(general_metric, p.general) if general else "-",
                words[verdict(general_metric, p.general)] if general else "not measured",
                "yes" if p.name in front else "",
            ]
        )
    return header, body


def plot(points: list[Point], task_metric: str, general_metric: str, front: set[str], path: Path) -> Path | None:
    """Task gain (x) against the change in general ability (y), both against the untuned base, with 95% intervals."""
    shown = [p for p in points if p.general is not None]
    if not shown:
        return None
    kx, ky = display_scale(task_metric), display_scale(general_metric)
    fig = Figure(figsize=(7, 5))  # a Figure of its own, not pyplot's global state: no GUI backend, safe in any thread
    ax = fig.subplots()
    ax.axhline(0, color="#9e9e9e", linewidth=0.8)
    ax.axvline(0, color="#9e9e9e", linewidth=0.8)
    for p in shown:
        x, y = p.task["diff"] * kx, p.general["diff"] * ky
        xerr = [[max(0.0, (p.task["diff"] - p.task["low"]) * kx)], [max(0.0, (p.task["high"] - p.task["diff"]) * kx)]]
        yerr = [[max(0.0, (p.general["diff"] - p.general["low"]) * ky)], [max(0.0, (p.general["high"] - p.general["diff"]) * ky)]]
        on_front = p.name in front
        colour = "#1e88e5" if keeps_general_ability(general_metric, p) else "#e53935"
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="*" if on_front else "o", markersize=12 if on_front else 6, color=colour, capsize=3)
        ax.annotate(p.name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ordered = sorted((p for p in shown if p.name in front), key=lambda p: p.task["diff"])
    if len(ordered) > 1:
        ax.plot([p.task["diff"] * kx for p in ordered], [p.general["diff"] * ky for p in ordered], "--", color="#455a64", linewidth=1)
    unit = lambda k: " (points)" if k == 100.0 else ""  # noqa: E731
    lower = "" if higher_is_better(task_metric) else ", lower is better"
    ax.set_xlabel(f"Δ {label(task_metric)}{unit(kx)} vs the untuned base model{lower}")
    ax.set_ylabel(f"Δ {label(general_metric)}{unit(ky)} vs the untuned base model")
    ax.set_title("Gain against cost (95% CI; ★ Pareto front; blue: general ability kept, red: lost)", fontsize=9)
    return atomic_write_png(fig, path)
