"""What `tunelab eval` shows people: the Markdown summary, the side-by-side HTML page, the bar
chart with intervals, and the rich table printed in the terminal."""

from __future__ import annotations

import html
from pathlib import Path

from rich.table import Table

from tunelab.evaluate.metric_facts import label


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def cell(m: dict) -> str:
    if m.get("mean") is None:
        return "n/a"
    return f"{fmt(m['mean'])} [{fmt(m['low'])}, {fmt(m['high'])}]"


def diff_cell(d: dict | None) -> str:
    if not d:
        return "n/a"
    sign = "+" if d["diff"] >= 0 else ""
    return f"{sign}{fmt(d['diff'])} [{fmt(d['low'])}, {fmt(d['high'])}] p={d['p_value']:.3f}"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows, one row per metric: each model's "mean [low, high]", then each Δ vs the baseline."""
    models, diffs = result["models"], result["differences"]
    header = ["metric", *models, *[f"Δ {n} − {result['baseline']}" for n in diffs]]
    rows = []
    for m in result["metric_order"]:
        rows.append([label(m), *[cell(b["metrics"][m]) for b in models.values()], *[diff_cell(d.get(m)) for d in diffs.values()]])
    return header, rows


def source_views(result: dict) -> list[tuple[str, dict]]:
    """(source, a result-shaped view of its comparison) for each data source of a mixed evaluation."""
    views = []
    for source, part in (result.get("by_source") or {}).items():
        view = {**result, "models": part["models"], "differences": part["differences"], "n_examples": part["n"]}
        views.append((source, view))
    return views


def source_markdown(result: dict) -> list[str]:
    views = source_views(result)
    if not views:
        return []
    lines = ["## By data source", "", "The same comparison within each source of the examples (intervals and Δ per source).", ""]
    for source, view in views:
        header, rows = table_rows(view)
        lines += [f"### `{source}` ({view['n_examples']} examples)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return lines


def summary_markdown(result: dict) -> str:
    header, rows = table_rows(result)
    gen = result["generation_settings"]
    lines = [
        f"# Evaluation: {', '.join(result['models'])}",
        "",
        f"{result['n_examples']} examples from `{result['data']['source']}` (sha256 `{result['data']['sha256'][:16]}…`), "
        f"{'greedy' if gen['greedy'] else 'sampled (temperature {}, top_p {})'.format(gen['temperature'], gen['top_p'])} decoding, "
        f"at most {gen['max_new_tokens']} new tokens.",
        "",
        "Each cell: mean [95% bootstrap interval]. Δ columns: paired bootstrap difference against "
        f"`{result['baseline']}` over the same examples, with a two-sided p-value; an interval that excludes 0 "
        "is a difference this evaluation set can see. BLEU is 0–100, ROUGE-L and BERTScore 0–1, lower perplexity is better.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    lines += source_markdown(result)
    for metric in ("bleu", "chrf"):
        corpus = {n: b["metrics"][metric].get("corpus") for n, b in result["models"].items() if metric in b["metrics"]}
        if corpus:
            lines += [f"Corpus {label(metric)}: " + ", ".join(f"{n} {fmt(v)}" for n, v in corpus.items()), ""]
    gens = {n: b["generation"] for n, b in result["models"].items() if b.get("generation")}
    if gens:
        lines += ["Generation: " + ", ".join(f"{n} {g['tokens_per_second']} tok/s ({g['seconds']} s)" for n, g in gens.items()), ""]
    losses = result["error_analysis"]["largest_losses"]
    if losses:
        a, b = result["error_analysis"]["compared"]
        lines += [
            f"Largest losses of `{b}` against `{a}` ({label(result['error_analysis']['metric'])}): "
            + ", ".join(f"{x['id']} ({fmt(x['loss'])})" for x in losses[:5])
            + "; see samples.html.",
            "",
        ]
    if result["signatures"]:
        lines += ["Signatures:", "", *[f"- {k}: `{v}`" for k, v in result["signatures"].items()], ""]
    return "\n".join(lines)


def rich_table(result: dict, title: str | None = None) -> Table:
    header, rows = table_rows(result)
    table = Table(title=title or f"{result['n_examples']} examples — mean [95% CI]; Δ vs {result['baseline']} (paired bootstrap)")
    for k, h in enumerate(header):
        table.add_column(h, overflow="fold", no_wrap=k == 0)
    for r in rows:
        table.add_row(*r)
    return table


def source_tables(result: dict) -> list[Table]:
    """One terminal table per data source of a mixed evaluation."""
    return [
        rich_table(view, f"{source}: {view['n_examples']} examples — mean [95% CI]; Δ vs {result['baseline']}")
        for source, view in source_views(result)
    ]


def _messages_html(messages: list[dict]) -> str:
    return "".join(f'<div class="turn"><b>{html.escape(m["role"])}</b>: <pre>{html.escape(m["content"])}</pre></div>' for m in messages)


def samples_html(result: dict, rows: list[dict], losses: list[float] | None) -> str:
    """A self-contained page: prompt, reference and each model's answer side by side, worst losses first."""
    names = list(result["models"])
    metrics = result["metric_order"]
    ea = result["error_analysis"]
    intro = (
        f"Ordered by how much <b>{html.escape(ea['compared'][1])}</b> lost against <b>{html.escape(ea['compared'][0])}</b> "
        f"on {html.escape(label(ea['metric']))} (largest loss first)."
        if losses
        else "In evaluation order."
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>tunelab eval samples</title><style>",
        "body{font-family:sans-serif;margin:1em;} table{border-collapse:collapse;width:100%;table-layout:fixed}"
        "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left}"
        "pre{white-space:pre-wrap;word-wrap:break-word;margin:0;font-family:inherit}"
        ".scores{color:#555;font-size:0.85em;margin-top:4px}.loss{color:#b00}.turn{margin-bottom:4px}",
        "</style></head><body>",
        f"<h1>Side by side: {html.escape(', '.join(names))}</h1><p>{intro} {len(rows)} examples.</p>",
        "<table><tr><th>prompt</th><th>reference</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>",
    ]
    for k, row in enumerate(rows):
        loss = f"<div class='loss'>loss {fmt(losses[k])}</div>" if losses else ""
        cells = [
            f"<td><div class='scores'>{html.escape(str(row['id']))}</div>{_messages_html(row['prompt'])}{loss}</td>",
            f"<td><pre>{html.escape(row['reference'])}</pre></td>",
        ]
        for n in names:
            answer = row["predictions"].get(n)
            scores = ", ".join(f"{label(m)} {fmt(row['scores'][n].get(m))}" for m in metrics if row["scores"][n].get(m) is not None)
            body = "<i>(not generated)</i>" if answer is None else f"<pre>{html.escape(answer)}</pre>"
            cells.append(f"<td>{body}<div class='scores'>{html.escape(scores)}</div></td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def metrics_png(result: dict, path: Path) -> Path:
    """One panel per metric: a bar per model with its 95% interval as error bars."""
    import matplotlib  # here: ~0.7 s to import (measured), paid only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): drawing needs no display

    metrics = [m for m in result["metric_order"] if any(b["metrics"][m].get("mean") is not None for b in result["models"].values())]
    names = list(result["models"])
    cols = max(1, min(4, len(metrics)))
    nrows = max(1, -(-len(metrics) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.0 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        means, errs = [], [[], []]
        for n in names:
            m = result["models"][n]["metrics"][metric]
            mean = m.get("mean")
            means.append(mean if mean is not None else 0.0)
            errs[0].append(mean - m["low"] if mean is not None else 0.0)
            errs[1].append(m["high"] - mean if mean is not None else 0.0)
        ax.bar(range(len(names)), means, yerr=errs, capsize=4, color=[colors[i % len(colors)] for i in range(len(names))])
        ax.set_xticks(range(len(names)), [n[:14] for n in names], rotation=20, ha="right", fontsize=8)
        ax.set_title(label(metric), fontsize=10)
        if min(means) >= 0:
            ax.set_ylim(bottom=0, top=None if max(m + e for m, e in zip(means, errs[1])) > 0 else 1)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"{result['n_examples']} examples, mean with 95% bootstrap interval", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
