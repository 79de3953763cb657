"""The data card: card.json (for programs), card.md (for people) and lengths.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.runs import DataDir

HISTOGRAM_BINS = 20


def token_stats(lengths: list[int], bins: np.ndarray | None = None) -> dict:
    if not lengths:
        return {"count": 0}
    a = np.asarray(lengths)
    counts, edges = np.histogram(a, bins=bins if bins is not None else HISTOGRAM_BINS)
    return {
        "count": int(a.size),
        "total": int(a.sum()),
        "min": int(a.min()),
        "max": int(a.max()),
        "mean": round(float(a.mean()), 1),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "histogram": {"edges": [round(float(x), 1) for x in edges], "counts": [int(c) for c in counts]},
    }


def shared_bins(lengths_by_split: dict[str, list[int]]) -> np.ndarray:
    every = [n for lengths in lengths_by_split.values() for n in lengths] or [0]
    return np.histogram_bin_edges(every, bins=HISTOGRAM_BINS)


def plot_lengths(lengths_by_split: dict[str, list[int]], bins: np.ndarray, path: Path) -> None:
    # a Figure of its own (not pyplot's global state): no GUI backend, safe in any thread
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, lengths in lengths_by_split.items():
        if lengths:
            ax.hist(lengths, bins=bins, alpha=0.6, label=f"{name} ({len(lengths)})")
    ax.set_xlabel("tokens per example (chat template applied)")
    ax.set_ylabel("examples")
    ax.set_title("Token lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def card_markdown(card: dict) -> str:
    c = card["counts"]
    lines = [
        "# Data card",
        "",
        f"Model tokenizer: `{card['model']}` · max tokens: {card['max_tokens']} · seed: {card['config']['seed']}",
        "",
        "| split | examples | tokens | mean | median | p95 | max | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in ("train", "validation", "test"):
        t = card["tokens"][split]
        if t["count"]:
            lines.append(
                f"| {split} | {c[split]} | {t['total']} | {t['mean']} | {t['median']:.0f} | {t['p95']:.0f} | {t['max']} | `{card['hashes'][split][:12]}` |"
            )
        else:
            lines.append(f"| {split} | 0 | | | | | | |")
    pairs = card.get("pairs")
    if pairs:
        lines += [
            "",
            "Preference pairs (a prompt with a chosen and a rejected answer; tokens count the longer side): "
            + ", ".join(f"{pairs[s]} of {c[s]} {s}" for s in ("train", "validation", "test")),
        ]
    lines += [
        "",
        f"All splits: sha256 `{card['hashes']['all']}`",
        "",
        "## Sources",
        "",
        "| source | format | records | valid | train |",
        "|---|---|---|---|---|",
    ]
    for s in card["sources"]:
        lines.append(
            f"| `{s['path']}`{' (eval)' if s.get('eval') else ''} | {s['format']} | {s['records']} | {s['loaded']} | {s.get('train', '')}"
            + (f" (replay, share {s['share']:g})" if s.get("share") is not None else "")
            + " |"
        )
    lines += ["", "## Dropped", ""]
    if card["drops"]:
        lines += ["| reason | count | examples |", "|---|---|---|"]
        for reason, d in card["drops"].items():
            lines.append(f"| {reason} | {d['count']} | {', '.join(d['examples'])} |")
        firsts = [(r, d["first_message"]) for r, d in card["drops"].items() if d.get("first_message")]
        if firsts:
            lines += ["", "First message per reason:", ""] + [f"- {r}: {m}" for r, m in firsts]
    else:
        lines.append("Nothing was dropped.")
    aug = card.get("augmentation") or {}
    if aug:
        lines += ["", "## Augmentation (training split only)", ""]
        lines += [f"- {k}: {v}" for k, v in aug.items()]
    lines += ["", "![token lengths](lengths.png)", ""]
    return "\n".join(lines)


def write_card(folder: Path, card: dict, lengths_by_split: dict[str, list[int]], bins: np.ndarray) -> None:
    """card.json, card.md and lengths.png into a data folder (the run's data/, or its staging copy)."""
    files = DataDir(Path(folder))
    atomic_write_json(files.card_json, card)
    atomic_write_text(files.card_md, card_markdown(card))
    plot_lengths(lengths_by_split, bins, files.lengths_plot)
