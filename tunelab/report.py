"""The lab report of a run: report.md and a self-contained report.html (images inlined).

Sections: summary, data card, training, base against tuned with intervals, sample answers
side by side, preference accuracy on held-out pairs (preference data only), people's blind A/B votes,
exports (size, speed, faithfulness and quality delta), and how to serve.
The HTML is the Markdown rendered by markdown-it, with PNGs embedded as data URIs, so it
opens in a browser with no network.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

from tunelab.evaluate import human
from tunelab.evaluate.benchmark import forgetting_verdict
from tunelab.evaluate.code import KIND as CODE_KIND
from tunelab.evaluate.code import code_headline
from tunelab.evaluate.metric_facts import label, verdict
from tunelab.export.card import imatrix_words
from tunelab.io import atomic_write_text, read_json, read_jsonl
from tunelab.runs import BenchmarkDir, RunDir, model_weights

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
pre{background:#f5f5f5;padding:.8em;overflow-x:auto}h1{border-bottom:2px solid #333}h2{border-bottom:1px solid #ccc;margin-top:2em}"""


def _load_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


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
            words = {"better": "improved", "worse": "worsened", "same": "did not change measurably"}[verdict(metric, d)]
            lines.append(
                f"- **{label(metric)}**: {name} {words} against {base}: Δ {d['diff']:+.4f} "
                f"(95% CI {d['low']:+.4f} … {d['high']:+.4f}, p = {d['p_value']:.3f})"
            )
    return lines


def benchmark_results(run: RunDir, kind: str = "multiple_choice") -> list[tuple[Path, dict]]:
    """(folder, benchmark.json) of every benchmark of this kind scored for this run (multiple choice, or code)."""
    folders = sorted(p for p in run.benchmarks.iterdir() if BenchmarkDir(p).benchmark_json.is_file()) if run.benchmarks.is_dir() else []
    results = [(f, read_json(BenchmarkDir(f).benchmark_json)) for f in folders]
    return [(f, r) for f, r in results if r.get("kind", "multiple_choice") == kind]


def code_headline_lines(run: RunDir) -> list[str]:
    return [f"- Code: {line}" for _, result in benchmark_results(run, CODE_KIND) if (line := code_headline(result))]


def code_section(run: RunDir) -> list[str]:
    """pass@k base against tuned, by running the code, and where each problem's outcome is (errors.md)."""
    out = []
    for folder, _ in benchmark_results(run, CODE_KIND):
        files = BenchmarkDir(folder)
        link = files.errors_md.relative_to(run.root).as_posix()
        out += ["## Code: does it pass its tests?", "", _demote(files.summary_md.read_text(), 2), ""]
        out += [f"Every problem's outcome, first error line and completion: [{link}]({link}).", ""]
    return out


def general_headline(run: RunDir) -> list[str]:
    lines = []
    for _, result in benchmark_results(run):
        verdict_line = forgetting_verdict(result)
        if verdict_line:
            lines.append(f"- General ability: {verdict_line}")
    return lines


def general_section(run: RunDir) -> list[str]:
    """Did fine-tuning keep general reasoning? The benchmark table, base against tuned, with its verdict."""
    results = benchmark_results(run)
    skipped = run.read_state().get("general", {}).get("skipped")
    if not results and not skipped:
        return []
    out = ["## General ability (forgetting check)", ""]
    if skipped:
        out += [f"_skipped: {skipped}_", ""]
    for folder, _ in results:
        out += [_demote(BenchmarkDir(folder).summary_md.read_text(), 2), ""]
    return out


def preference_section(run: RunDir) -> list[str]:
    """Held-out preference accuracy, base against tuned (evaluate/preference.py), for runs on preference pairs."""
    summary = run.preference_eval_dir.summary_md
    if not summary.is_file():
        return []
    return [_demote(summary.read_text(), 1), "Per pair: `eval/preference/pairs.jsonl`.", ""]


def samples_table(predictions: list[dict], names: list[str], n: int = 6) -> str:
    if not predictions:
        return "_no predictions_"
    header = "| prompt | reference | " + " | ".join(names) + " |\n|" + "---|" * (2 + len(names))
    rows = []
    for p in predictions[:n]:
        prompt = p["prompt"][-1]["content"] if isinstance(p["prompt"], list) else p["prompt"]
        rows.append(
            f"| {_cell(prompt, 200)} | {_cell(p['reference'])} | " + " | ".join(_cell(p["predictions"].get(m)) for m in names) + " |"
        )
    return header + "\n" + "\n".join(rows)


def export_section(faith: dict | None, run: RunDir) -> str:
    if not faith:
        return "_not exported (set `export.formats` in the recipe, or run `tunelab export`)_"
    metric_names = sorted({m for e in faith["formats"].values() for m in e.get("metrics", {})})
    head = ["format", "file", "size", "tokens/s", "greedy prompts equal", "token agreement", "faithful"] + [f"Δ {m}" for m in metric_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fmt, e in faith["formats"].items():
        tps = e.get("tokens_per_second")
        row = [
            fmt,
            f"`{Path(e['path']).name}`",
            f"{e['bytes'] / 2**20:.1f} MiB + base {e['base_bytes'] / 2**20:.0f} MiB"
            if "base_bytes" in e
            else f"{e['bytes'] / 2**20:.0f} MiB",
            f"{tps:.1f}" if tps else "-",
            f"{e.get('prompts_equal', '-')}/{e.get('prompts', '-')}",
            f"{e['agreement']:.1%}" if "agreement" in e else "-",
            ("yes" if e.get("passed") else "**no**") if "passed" in e else "-",
        ]
        row += [f"{e['metrics'][m]['delta']:+.4f}" if m in e.get("metrics", {}) else "-" for m in metric_names]
        lines.append("| " + " | ".join(row) + " |")
    if faith.get("pytorch_tokens_per_second"):
        lines.append(
            f"\nThe PyTorch fp32 model generated {faith['pytorch_tokens_per_second']:.1f} tokens/s on the same prompts (while also recording logit margins); `bench/cpu_inference.py` measures generation speed properly."
        )
    if faith.get("imatrix"):
        lines.append(f"\nThe `_imat` formats are quantized with llama.cpp's importance matrix {imatrix_words(faith['imatrix'])}.")
    if faith.get("metrics_note"):
        lines.append(f"\n{faith['metrics_note']}")
    return "\n".join(lines)


TRAINING_KEYS = [
    "weights",
    "objective",
    "base_model",
    "steps",
    "epochs",
    "train_examples",
    "tokens_seen",
    "train_seconds",
    "tokens_per_second",
    "mfu",
    "train_loss",
    "eval_loss",
    "precision",
    "threads",
]


def _image(run: RunDir, path: Path, alt: str) -> list[str]:
    """A Markdown image of a run file, linked relative to the run (where report.md lives)."""
    return [f"![{alt}]({path.relative_to(run.root).as_posix()})", ""] if path.is_file() else []


def build_markdown(run: RunDir) -> str:
    data, evaluation, export = run.data_dir, run.eval_dir, run.export_dir
    recipe_text = run.recipe.read_text() if run.recipe.is_file() else ""
    card_md = data.card_md.read_text() if data.card_md.is_file() else "_no data card_"
    card_md = re.sub(r"^!\[[^\]]*\]\(lengths\.png\)\s*$", "", card_md, flags=re.M)  # its image path is relative to data/
    ev = _load_json(evaluation.eval_json)
    preferences = _load_json(run.preference_eval_dir.preference_json)

    out = [f"# tunelab report: {run.root.name}", ""]
    if ev:
        lines = headline(ev) + (headline(preferences) if preferences else [])
        out += ["## Summary", "", *(lines or ["- only one model was evaluated"]), *code_headline_lines(run), *general_headline(run), ""]
    out += ["## Data", "", _demote(card_md, 2), "", *_image(run, data.lengths_plot, "token lengths")]
    out += ["## Training", "", *training_section(run)]
    out += ["## Base model against tuned model", "", *evaluation_section(run, ev)]
    out += preference_section(run)
    out += code_section(run)
    out += general_section(run)
    out += ["## Human evaluation: blind A/B votes", "", human.report_section(run), ""]
    out += ["## Exports", "", export_section(_load_json(export.faithfulness_json), run), ""]
    out += ["## Serve it", "", *serve_section(run)]
    out += ["## Recipe", "", "```yaml", recipe_text.rstrip(), "```", ""]
    return "\n".join(out)


def training_section(run: RunDir) -> list[str]:
    summary = _load_json(run.train_summary) or {}
    if summary and "weights" not in summary:  # written before the two axes had a key each: the model info has them
        info = run.model_info()
        summary |= {"weights": model_weights(info), "objective": info.get("objective")}
    out = []
    if summary:
        cells = [f"{summary.get(k):.4g}" if isinstance(summary.get(k), float) else str(summary.get(k)) for k in TRAINING_KEYS]
        out += ["| " + " | ".join(TRAINING_KEYS) + " |", "|" + "---|" * len(TRAINING_KEYS), "| " + " | ".join(cells) + " |", ""]
    return out + _image(run, run.loss_plot, "loss curves")


def evaluation_section(run: RunDir, ev: dict | None) -> list[str]:
    if not ev:
        return ["_not evaluated yet_", ""]
    evaluation = run.eval_dir
    preds = read_jsonl(evaluation.predictions) if evaluation.predictions.is_file() else []
    summary_md = evaluation.summary_md.read_text() if evaluation.summary_md.is_file() else ""
    return [
        _demote(summary_md, 2),
        "",
        *_image(run, evaluation.metrics_plot, "metrics with 95% intervals"),
        "### Sample answers side by side",
        "",
        samples_table(preds, list(ev["models"])),
        "",
        "All answers: `eval/predictions.jsonl`; worst regressions first: `eval/samples.html`.",
        "",
    ]


def serve_section(run: RunDir) -> list[str]:
    gguf, lora = run.export_dir.gguf_files(), run.export_dir.lora
    out = ["```bash", f"tunelab serve {run.root}            # chat UI with base vs tuned side by side"]
    if gguf:
        out += [
            f"tunelab serve {gguf[0]}   # the GGUF through llama.cpp (fast CPU path)",
            f"tunelab api {gguf[0]}     # OpenAI-style API on 127.0.0.1:8000",
        ]
        if run.export_dir.modelfile.is_file():
            out += [f"ollama create {run.root.name} -f {run.export_dir.modelfile}"]
    if lora.is_dir():
        out += [f"tunelab serve {lora}   # the LoRA adapter GGUF on its base model's GGUF, through llama.cpp"]
        if run.export_dir.lora_modelfile.is_file():
            out += [f"ollama create {run.root.name}-lora -f {run.export_dir.lora_modelfile}"]
    return out + [f'tunelab generate {run.root} "Who are you?"', "```", ""]


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
    md = build_markdown(run)
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>tunelab report: {html.escape(run.root.name)}</title>"
        f"<style>{CSS}</style></head><body>{_inline_images(body, run.root)}</body></html>"
    )
    return atomic_write_text(run.report_md, md), atomic_write_text(run.report_html, page)
