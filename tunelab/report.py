"""The lab report of a run: report.md and a self-contained report.html (images inlined).

Sections: summary, data card, training, base against tuned with intervals, sample answers
side by side, exports (size, speed, faithfulness and quality delta), and how to serve.
The HTML is the Markdown rendered by markdown-it, with PNGs embedded as data URIs, so it
opens in a browser with no network.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from tunelab.io import atomic_write_text, read_jsonl
from tunelab.runs import RunDir

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
pre{background:#f5f5f5;padding:.8em;overflow-x:auto}h1{border-bottom:2px solid #333}h2{border-bottom:1px solid #ccc;margin-top:2em}"""


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _demote(markdown: str, levels: int = 1) -> str:
    return re.sub(r"^(#+)", lambda m: m.group(1) + "#" * levels, markdown, flags=re.M)


def _cell(text: str | None, limit: int = 400) -> str:
    text = (text or "").strip()
    if len(text) > limit:
        text = text[:limit] + " …"
    return html.escape(text).replace("|", "&#124;").replace("\n", "<br>")


def headline(ev: dict) -> list[str]:
    """Plain sentences: for each metric, did the tuned model beat the base beyond the noise?"""
    lines = []
    base = ev["baseline"]
    for name, diffs in ev.get("differences", {}).items():
        for metric, d in diffs.items():
            if not isinstance(d, dict) or d.get("diff") is None:
                continue
            lower_is_better = metric == "perplexity"
            better = (d["diff"] < 0) if lower_is_better else (d["diff"] > 0)
            real = d["low"] > 0 or d["high"] < 0
            verdict = ("improved" if better else "worsened") if real else "did not change measurably"
            lines.append(f"- **{metric}**: {name} {verdict} against {base}: Δ {d['diff']:+.4f} (95% CI {d['low']:+.4f} … {d['high']:+.4f}, p = {d['p_value']:.3f})")
    return lines


def samples_table(predictions: list[dict], names: list[str], n: int = 6) -> str:
    if not predictions:
        return "_no predictions_"
    header = "| prompt | reference | " + " | ".join(names) + " |\n|" + "---|" * (2 + len(names))
    rows = []
    for p in predictions[:n]:
        prompt = p["prompt"][-1]["content"] if isinstance(p["prompt"], list) else p["prompt"]
        rows.append(f"| {_cell(prompt, 200)} | {_cell(p['reference'])} | " + " | ".join(_cell(p["predictions"].get(m)) for m in names) + " |")
    return header + "\n" + "\n".join(rows)


def export_section(faith: dict | None, run: RunDir) -> str:
    if not faith:
        return "_not exported (set `export.formats` in the recipe, or run `tunelab export`)_"
    metric_names = sorted({m for e in faith["formats"].values() for m in e.get("metrics", {})})
    head = ["format", "file", "size", "tokens/s", "greedy prompts equal", "token agreement", "faithful"] + [f"Δ {m}" for m in metric_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fmt, e in faith["formats"].items():
        tps = e.get("tokens_per_second")
        row = [fmt, f"`{Path(e['path']).name}`", f"{e['bytes'] / 2**20:.0f} MiB", f"{tps:.1f}" if tps else "-",
               f"{e.get('prompts_equal', '-')}/{e.get('prompts', '-')}", f"{e['agreement']:.1%}" if "agreement" in e else "-",
               ("yes" if e.get("passed") else "**no**") if "passed" in e else "-"]
        row += [f"{e['metrics'][m]['delta']:+.4f}" if m in e.get("metrics", {}) else "-" for m in metric_names]
        lines.append("| " + " | ".join(row) + " |")
    if faith.get("pytorch_tokens_per_second"):
        lines.append(f"\nThe PyTorch fp32 model generated {faith['pytorch_tokens_per_second']:.1f} tokens/s on the same prompts (while also recording logit margins); `bench/cpu_inference.py` measures generation speed properly.")
    if faith.get("metrics_note"):
        lines.append(f"\n{faith['metrics_note']}")
    return "\n".join(lines)


def build_markdown(run: RunDir) -> str:
    recipe_text = run.recipe.read_text() if run.recipe.is_file() else ""
    card_md = (run.data / "card.md").read_text() if (run.data / "card.md").is_file() else "_no data card_"
    card_md = re.sub(r"^!\[[^\]]*\]\(lengths\.png\)\s*$", "", card_md, flags=re.M)  # its image path is relative to data/
    summary = _load_json(run.train_summary) or {}
    ev = _load_json(run.eval / "eval.json")
    faith = _load_json(run.export / "faithfulness.json")
    preds = read_jsonl(run.eval / "predictions.jsonl") if (run.eval / "predictions.jsonl").is_file() else []
    gguf = sorted((run.export / "gguf").glob("*.gguf")) if (run.export / "gguf").is_dir() else []

    out = [f"# tunelab report: {run.root.name}", ""]
    if ev:
        out += ["## Summary", "", *(headline(ev) or ["- only one model was evaluated"]), ""]
    out += ["## Data", "", _demote(card_md, 2), ""]
    if (run.data / "lengths.png").is_file():
        out += ["![token lengths](data/lengths.png)", ""]
    out += ["## Training", ""]
    if summary:
        keys = ["method", "base_model", "steps", "epochs", "train_examples", "tokens_seen", "train_seconds", "tokens_per_second", "train_loss", "eval_loss", "precision", "threads"]
        out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                "| " + " | ".join(f"{summary.get(k):.4g}" if isinstance(summary.get(k), float) else str(summary.get(k)) for k in keys) + " |", ""]
    if run.loss_plot.is_file():
        out += ["![loss curves](train/loss.png)", ""]
    out += ["## Base model against tuned model", ""]
    if ev:
        summary_md = (run.eval / "summary.md").read_text() if (run.eval / "summary.md").is_file() else ""
        out += [_demote(summary_md, 2), ""]
        if (run.eval / "metrics.png").is_file():
            out += ["![metrics with 95% intervals](eval/metrics.png)", ""]
        out += ["### Sample answers side by side", "", samples_table(preds, list(ev["models"])), "",
                "All answers: `eval/predictions.jsonl`; worst regressions first: `eval/samples.html`.", ""]
    else:
        out += ["_not evaluated yet_", ""]
    out += ["## Exports", "", export_section(faith, run), ""]
    out += ["## Serve it", "", "```bash", f"tunelab serve {run.root}            # chat UI with base vs tuned side by side"]
    if gguf:
        out += [f"tunelab serve {gguf[0]}   # the GGUF through llama.cpp (fast CPU path)", f"tunelab api {gguf[0]}     # OpenAI-style API on 127.0.0.1:8000"]
        if (run.export / "gguf" / "Modelfile").is_file():
            out += [f"ollama create {run.root.name} -f {run.export / 'gguf' / 'Modelfile'}"]
    out += [f"tunelab generate {run.root} \"Who are you?\"", "```", ""]
    out += ["## Recipe", "", "```yaml", recipe_text.rstrip(), "```", ""]
    return "\n".join(out)


def _inline_images(html_text: str, root: Path) -> str:
    def repl(m):
        src = m.group(1)
        path = root / src
        if src.startswith(("data:", "http")) or not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+)"', repl, html_text)


def write_report(run: RunDir) -> tuple[Path, Path]:
    from markdown_it import MarkdownIt

    md = build_markdown(run)
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tunelab report: {html.escape(run.root.name)}</title>"
            f"<style>{CSS}</style></head><body>{_inline_images(body, run.root)}</body></html>")
    return atomic_write_text(run.report_md, md), atomic_write_text(run.report_html, page)
