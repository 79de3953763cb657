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
from tunelab.config import IMATRIX_FORMATS  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make setup-gguf)"),
]


# the formats without an importance matrix: those need llama.cpp's tools built (the slow test below)
PLAIN = [f for f in bench_quality.FORMATS if f not in IMATRIX_FORMATS]


def smoke(tmp_path: Path, model_dir: Path, formats: list[str]) -> str:
    results = tmp_path / "RESULTS.md"
    argv = ["--smoke", "--run", str(model_dir), "--workdir", str(tmp_path / "work"), "--threads", "1", "--formats", *formats]
    return run_bench_section(results, bench_quality, argv)


def format_rows(text: str) -> dict[str, str]:
    """The first table's row of each format (the metric table's rows start with the format too)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith(("| gguf-", "| PyTorch")):
            rows.setdefault(line.split(" | ")[0][2:], line)
    return rows


PCT, NUM = r"[+-][\d.]+%", r"[+-][\d.]+%?"
ROW = rf"\| \d+ MiB \| \d/4 \| [\d.]+% \| yes \| \d/4 \| [\d.]+ \| {PCT} \[{NUM}, {NUM}\] \| {PCT} \[{NUM}, {NUM}\] \| [\d.]+ \|"


def test_smoke_run_writes_its_section(tmp_path, tiny_model_dir, shared_data):
    text = smoke(tmp_path, tiny_model_dir, PLAIN)
    assert "- command: `python bench/export_quality.py --smoke" in text
    assert "4 held-out prompts from alpaca_eval_gpt4_reference.json" in text and "fewer than the 64" in text
    rows = format_rows(text)
    for fmt in PLAIN:  # the same prompt ids on every format; llama.cpp may split an odd reference text otherwise
        assert re.search(rf"\| {fmt} {ROW}", rows[fmt])
    for label in ("BLEU", "ROUGE-L F1", "BERTScore P", "BERTScore R", "BERTScore F1"):
        assert re.search(rf"\| gguf-q8_0 \| {label} \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\] \| [\d.]+ \|", text), label
    for fmt in set(bench_quality.GOALS) & set(PLAIN):
        assert re.search(rf"- {fmt.upper()}: Δ BERTScore F1 .*: \*\*(met|NOT met)\*\* \(95% interval inside the goal: (yes|no)\)", text)
        assert re.search(rf"- {fmt.upper()}: Δ perplexity .*: \*\*(met|NOT met)\*\*", text)
    details = json.loads(next((tmp_path / "work").glob("*/export_quality.json")).read_text())
    assert len(details["pytorch"]["answers"]) == 4 and len(details["formats"]["gguf-q4_k_m"]["answers"]) == 4
    # on PyTorch's own token ids only the weights differ: f16 scores the references as fp32 does
    assert abs(details["formats"]["gguf-f16"]["perplexity_delta_same_ids"]["diff"]) < 0.5


def test_perplexity_delta_is_the_geometric_mean_ratio():
    d = bench_quality.perplexity_delta([10.0, 20.0, 40.0], [10.1, 20.2, 40.4])
    assert d["diff"] == pytest.approx(1.0) and d["low"] == pytest.approx(1.0) and d["high"] == pytest.approx(1.0)


@pytest.mark.slow
def test_smoke_run_scores_the_importance_matrix_formats(tmp_path, tiny_model_dir, shared_data):
    """The imatrix formats beside plain Q4_K_M, calibrated on the demo's Alpaca data (not a run): a row each and
    the 3% goal's verdict (slow: llama.cpp's llama-imatrix and llama-quantize are built on first use)."""
    text = smoke(tmp_path, tiny_model_dir, ["gguf-q4_k_m", *IMATRIX_FORMATS])
    rows = format_rows(text)
    for fmt in ["gguf-q4_k_m", *IMATRIX_FORMATS]:
        assert re.search(rf"\| {fmt} {ROW}", rows[fmt])
    assert "llama-imatrix on 1,024 tokens (4 chunks of 256) of alpaca_en_demo.json (training data)" in text
    assert re.search(r"- GGUF-Q4_K_M_IMAT: Δ perplexity .*goal <= 3%: \*\*(met|NOT met)\*\*", text)
    calibration = (tmp_path / "work").glob("*/export/imatrix/calibration.txt")
    assert "<|im_start|>" in next(calibration).read_text()


def test_the_calibration_text_must_not_hold_a_held_out_prompt(tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("<|im_start|>user\nHow do I build a PC?<|im_end|>\n")
    bench_quality.check_disjoint(text, [[{"role": "user", "content": "What color is the sky"}]])
    with pytest.raises(TunelabError, match=r"held-out prompts \[1\] appear in the calibration text"):
        bench_quality.check_disjoint(text, [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "How do I build a PC?"}]])
