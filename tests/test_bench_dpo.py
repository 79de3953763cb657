"""bench/dpo_throughput.py --smoke: every configuration trains on the tiny model and the section is written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from conftest import run_bench_section

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_dpo", ROOT / "bench" / "dpo_throughput.py")
bench_dpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_dpo)


def test_smoke_run_writes_its_section(tmp_path, tiny_model_dir):
    results = tmp_path / "RESULTS.md"
    text = run_bench_section(results, bench_dpo, ["--smoke", "--model", str(tiny_model_dir), "--threads", "1"])
    assert "- command: `python bench/dpo_throughput.py --smoke" in text and "- commit: " in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "configuration" not in line]
    assert [row.split(" | ")[0][2:] for row in rows] == [bench_dpo.TRL_DEFAULT, bench_dpo.TRL_NO_CHECKPOINTING, bench_dpo.TUNELAB]
    for row in rows:  # tokens/s, ratio (one round: n=1), held-out loss, peak memory: numbers, not placeholders
        assert re.search(r"\| [\d,.]+ \([\d,.]+–[\d,.]+, n=1\) \| [\d.]+x \([\d.]+–[\d.]+x, n=1\) \| \d+\.\d{4} \| [\d,]+ \|$", row), row
    assert "8 pairs" in text
