"""bench/cpu_inference.py --smoke: every path generates the same count after the same prompt ids, and the section is written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import run_bench_section

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "bench" / "cpu_inference.py")
bench_inference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_inference)

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make setup-gguf)"),
]


def test_smoke_run_writes_its_section(tmp_path, tiny_model_dir):
    results = tmp_path / "RESULTS.md"
    argv = ["--smoke", "--run", str(tiny_model_dir), "--export-dir", str(tmp_path / "export"), "--threads", "1"]
    text = run_bench_section(results, bench_inference, argv)
    assert "- command: `python bench/cpu_inference.py --smoke" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    names = [row.split(" | ")[0][2:] for row in rows]
    tunelab = [bench_inference.tunelab_row(q) for q in bench_inference.QUANTS]
    raw = [bench_inference.raw_row(q) for q in bench_inference.QUANTS]
    assert names == [bench_inference.FP32, bench_inference.BF16, bench_inference.INT8, tunelab[0], raw[0], tunelab[1], raw[1]]
    number = r"[\d,.]+"
    for row in rows:  # 16 tokens on every path; seconds, tokens/s and both ratios are numbers (one round: n=1)
        cells = " \\| ".join([rf"{number} \({number}–{number}, n=1\)"] * 2 + [rf"{number}x \({number}–{number}x, n=1\)"] * 2)
        assert re.search(rf"\| 16 \| {cells} \|$", row), row
    for q in bench_inference.QUANTS:
        assert re.search(rf"- GGUF {q.upper()}: tunelab / raw loop = {number}x .*\(goal >= 0.97x: (met|NOT met)\)", text)
    assert "Transformers bf16: real bf16 weights" in text or "Transformers bf16: fp32 weights under bf16 autocast" in text


def test_a_path_that_generates_too_few_tokens_is_refused():
    with pytest.raises(AssertionError, match="generated 15 new tokens, not 16"):
        bench_inference.check_same_work("x", [1, 2], list(range(15)), [1, 2], 16)
    with pytest.raises(AssertionError, match="prompt token ids differ"):
        bench_inference.check_same_work("x", [1, 3], list(range(16)), [1, 2], 16)
