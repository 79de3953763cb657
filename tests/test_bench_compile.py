"""bench/train_compile.py --smoke: both rows train through train_recipe (one compiled) and the section is written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import run_bench_section

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_compile", ROOT / "bench" / "train_compile.py")
bench_compile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_compile)


@pytest.mark.slow  # inductor compiles the tiny model for about a minute on 2 cores
def test_smoke_run_writes_its_section(tmp_path, tiny_model_dir):
    text = run_bench_section(tmp_path / "RESULTS.md", bench_compile, ["--smoke", "--model", str(tiny_model_dir), "--threads", "1"])
    assert "- command: `python bench/train_compile.py --smoke" in text
    number = r"[\d,.]+"
    for name in (bench_compile.EAGER, bench_compile.COMPILED):
        row = re.search(rf"^\| {re.escape(name)} \| {number} s \(.*\) \| {number} \(.*\) \| {number}x.* \|$", text, re.M)
        assert row, name
    assert re.search(r"breaks even after ([\d,]+ examples|never \(no faster per step\))", text)
    assert re.search(r"logged training losses at the same step and seed: \d\.\d{4}\.", text)
