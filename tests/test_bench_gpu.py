"""bench/gpu.py without a GPU: the dry run plans, checks and takes tiny steps; results replace their own section."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_alpaca

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
bench_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_gpu)


def test_results_replace_their_own_section_only():
    before = "# Results\n\n## Data stage\n\nold data figures\n\n## GPU training (bench/gpu.py)\n\nold GPU figures\n\n## Evaluation\n\neval figures\n"
    section = "## GPU training (bench/gpu.py)\n\nnew GPU figures\n"
    after = results.replace_section(before, bench_gpu.TITLE, section)
    assert after == before.replace("old GPU figures", "new GPU figures")
    assert results.replace_section(after, bench_gpu.TITLE, section) == after  # run twice: still one section
    added = results.replace_section("# Results\n\n## Data stage\n\nfigures\n", bench_gpu.TITLE, section)
    assert added == "# Results\n\n## Data stage\n\nfigures\n\n" + section
    last = results.replace_section("## Other\n\nx\n\n## GPU training (bench/gpu.py)\n\nold\n", bench_gpu.TITLE, section)
    assert last == "## Other\n\nx\n\n" + section


def test_a_failed_configuration_is_a_row_not_a_lost_run():
    configs = [{"name": "tunelab, FSDP × 2", "processes": 2}, {"name": bench_gpu.TRL_NAME, "processes": 1}]
    figures = {
        "tunelab, FSDP × 2": {"error": "failed (exit code 1)"},
        bench_gpu.TRL_NAME: {"tokens_per_second": 1000.0, "tokens_per_step": 4096, "peak_memory_gib": 3.5, "train_loss": 1.25},
    }
    meta = dict(date="d", command="c", commit="x", machine="m", load_before="0", load_after="0", recipe="r", model="m", steps=2)
    table = bench_gpu.results_section(configs, figures, meta, "2 × NVIDIA H100 80GB HBM3")
    assert table.startswith("## GPU training (bench/gpu.py) · 2 × NVIDIA H100 80GB HBM3\n")
    assert "| tunelab, FSDP × 2 | 2 | failed (exit code 1) |" in table
    assert "| TRL SFTTrainer, 1 GPU | 1 | 1,000 | 1,000 | 4,096 | 3.50 | 1.2500 | 1.00x |" in table


def test_dry_run_on_a_cpu(tmp_path, tiny_model_dir):
    """The plan names every configuration and its command, the checks pass, 2 tiny steps of tunelab and TRL run; no results written."""
    data = write_alpaca(tmp_path / "qa.json")
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes()
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "w")]
    cmd += ["--set", f"data.sources=[{{path: {data}}}]", "--set", "data.test_size=4"]
    out = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert results.read_bytes() == before
    text = out.stdout
    for name in ("tunelab, 1 GPU", "tunelab, DDP × 2", "tunelab, FSDP × 2", bench_gpu.TRL_NAME):
        assert f"{name}: $ " in text
    assert "--processes 2 --set name=gpu-fsdp --set train.distributed=fsdp" in text
    assert "check: TrainingArguments accept train.distributed=fsdp" in text
    assert "dry run on" in text and "not GPU figures" in text
    rows = [line for line in text.splitlines() if line.startswith("| tunelab, 1 GPU |") or line.startswith(f"| {bench_gpu.TRL_NAME} |")]
    assert len(rows) == 2 and not any("failed" in row for row in rows)
