"""bench/export_quality.py --smoke on the tiny model: every format is compared on answers, metrics and perplexity, and the section is written."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import run_bench_section

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import export_quality as bench_quality  # noqa: E402

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make setup-gguf)"),
]


def test_smoke_run_writes_its_section(tmp_path, tiny_model_dir, shared_data):
    results = tmp_path / "RESULTS.md"
    argv = ["--smoke", "--run", str(tiny_model_dir), "--workdir", str(tmp_path / "work"), "--threads", "1"]
    text = run_bench_section(results, bench_quality, argv)
    assert "- command: `python bench/export_quality.py --smoke" in text
    assert "4 held-out prompts from alpaca_eval_gpt4_reference.json" in text and "fewer than the 64" in text
    rows = {}  # the first table's row of each format (the metric table's rows start with the format too)
    for line in text.splitlines():
        if line.startswith(("| gguf-", "| PyTorch")):
            rows.setdefault(line.split(" | ")[0][2:], line)
    pct = r"[+-][\d.]+%"
    num = r"[+-][\d.]+%?"
    for fmt in bench_quality.FORMATS:  # the same prompt ids on every format; llama.cpp may split an odd reference text otherwise
        assert re.search(
            rf"\| {fmt} \| \d+ MiB \| \d/4 \| [\d.]+% \| yes \| \d/4 \| [\d.]+ \| {pct} \[{num}, {num}\] \| {pct} \[{num}, {num}\] \| [\d.]+ \|",
            rows[fmt],
        )
    for label in ("BLEU", "ROUGE-L F1", "BERTScore P", "BERTScore R", "BERTScore F1"):
        assert re.search(rf"\| gguf-q8_0 \| {label} \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\] \| [\d.]+ \|", text), label
    for fmt in bench_quality.GOALS:
        assert re.search(rf"- {fmt.upper()}: Δ BERTScore F1 .*: \*\*(met|NOT met)\*\* \(95% interval inside the goal: (yes|no)\)", text)
        assert re.search(rf"- {fmt.upper()}: Δ perplexity .*: \*\*(met|NOT met)\*\*", text)
    details = json.loads(next((tmp_path / "work").glob("*/export_quality.json")).read_text())
    assert len(details["pytorch"]["answers"]) == 4 and len(details["formats"]["gguf-q4_k_m"]["answers"]) == 4
    # on PyTorch's own token ids only the weights differ: f16 scores the references as fp32 does
    assert abs(details["formats"]["gguf-f16"]["perplexity_delta_same_ids"]["diff"]) < 0.5


def test_perplexity_delta_is_the_geometric_mean_ratio():
    d = bench_quality.perplexity_delta([10.0, 20.0, 40.0], [10.1, 20.2, 40.4])
    assert d["diff"] == pytest.approx(1.0) and d["low"] == pytest.approx(1.0) and d["high"] == pytest.approx(1.0)
