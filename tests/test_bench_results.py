"""bench/results.py: a section replaces its own on this CPU and nothing else, a busy machine is refused, figures are median (min–max)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results  # noqa: E402

BEFORE = (
    "# Benchmark results\n\n## Data stage (bench/data_prepare.py)\n\nhand-written  \nlines, trailing spaces  \n\n"
    "## Training throughput (bench/train_throughput.py)\n\nold figures\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "## Evaluation (bench/eval_scoring.py)\n\n- 2026-11-22 eval figures\nno newline at the end"
)
IDLE = {"load_before": (0.1, 0.2, 0.3), "busy": False}


def test_replacing_a_section_keeps_the_others_byte_identical():
    new = "## Training throughput (bench/train_throughput.py)\n\nnew figures\n"
    after = results.replace_section(BEFORE, "Training throughput (bench/train_throughput.py)", new)
    head, _, rest = BEFORE.partition("## Training throughput")
    tail = rest[rest.index("## Evaluation") :]
    assert after == head + new + "\n" + tail
    assert results.replace_section(after, "Training throughput (bench/train_throughput.py)", new) == after  # twice: still one
    last = results.replace_section(BEFORE, "Evaluation (bench/eval_scoring.py)", "## Evaluation (bench/eval_scoring.py)\n\nx\n")
    assert last == BEFORE[: BEFORE.index("## Evaluation")] + "## Evaluation (bench/eval_scoring.py)\n\nx\n"


def test_a_new_section_is_appended():
    added = results.replace_section(BEFORE, "Serving", "## Serving\n\nfigures\n")
    assert added == BEFORE + "\n\n## Serving\n\nfigures\n"
    assert results.replace_section("", "Serving", "## Serving\n\nfigures\n") == "## Serving\n\nfigures\n"
    # a title is matched whole: a longer heading that starts with it is another section
    assert (
        results.replace_section("## Data stage (old)\n\nx\n", "Data stage", "## Data stage\n\ny\n")
        == "## Data stage (old)\n\nx\n\n## Data stage\n\ny\n"
    )


def test_write_section_replaces_this_cpus_section_alone(tmp_path):
    import torch  # the header names torch's thread count where the bench uses torch

    from tunelab.cpu import cpu

    title = "Data stage (bench/data_prepare.py)"
    elsewhere = f"## {results.keyed_title(title, 'Another CPU (AVX2)')}\n\nanother CPU's figures  \n\n"
    tail = "## Evaluation (bench/eval_scoring.py) · Another CPU (AVX2)\n\n- eval figures\nno newline at the end"
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# Benchmark results\n\n{elsewhere}## {results.keyed_title(title)}\n\nold figures\n\n{tail}")
    section = results.write_section(
        path, title, "| what | s |\n|---|---|\n| x | 1.0 (0.9–1.1) |", IDLE, ["bench/data_prepare.py", "--repeats", "3"]
    )
    assert path.read_text() == f"# Benchmark results\n\n{elsewhere}{section}\n{tail}"  # another CPU's section of the same bench stays
    assert results.keyed_title(title) == f"{title} · {cpu().label}"
    assert section.startswith(f"## {title} · {cpu().label}\n\n- command: `python bench/data_prepare.py --repeats 3`\n")
    assert re.search(r"^- date: \d{4}-\d\d-\d\d \d\d:\d\d", section, re.M)
    assert re.search(r"^- commit: ([0-9a-f]{7,}(\+dirty)?|unknown \(no git here\))$", section, re.M)
    assert f"\n- CPU: {cpu().describe()}; " in section and re.search(r"^- CPU: .+; \d+ logical CPUs$", section, re.M)
    assert f"\n- torch threads: {torch.get_num_threads()}\n" in section
    assert re.search(r"^- load average \(1/5/15 min\): 0\.10 / 0\.20 / 0\.30 before, [\d.]+ / [\d.]+ / [\d.]+ after$", section, re.M)
    assert "Taken under load" not in section and section.endswith("| x | 1.0 (0.9–1.1) |\n")
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary file left
    # on the other CPU, the same bench replaces that section and leaves this one
    other = results.keyed_title(title, "Another CPU (AVX2)")
    again = results.replace_section(path.read_text(), other, f"## {other}\n\nnew figures\n")
    assert again == f"# Benchmark results\n\n## {other}\n\nnew figures\n\n{section}\n{tail}"


def test_refusal_under_load_and_allow_busy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results.os, "getloadavg", lambda: (3.5, 2.0, 1.0))
    with pytest.raises(SystemExit) as refused:
        results.check_idle(max_load=1.0, wait_s=0)
    assert "refusing to measure: the 1-minute load average is 3.50 (above 1.0)" in str(refused.value)
    assert "--allow-busy" in str(refused.value)
    idle = results.check_idle(max_load=1.0, allow_busy=True, wait_s=0)
    assert idle == {"load_before": (3.5, 2.0, 1.0), "busy": True}
    section = results.write_section(tmp_path / "R.md", "X", "figures", idle, ["bench/x.py"])
    assert "**Taken under load (1-minute load average 3.50 before the run, recorded with `--allow-busy`)" in section
    assert "not to be quoted.**" in section
    assert results.check_idle(max_load=4.0, wait_s=0) == {"load_before": (3.5, 2.0, 1.0), "busy": False}


def test_the_load_may_settle_while_check_idle_waits(monkeypatch):
    loads = iter([(2.0, 1.0, 1.0), (1.5, 1.0, 1.0), (0.5, 1.0, 1.0)])
    monkeypatch.setattr(results.os, "getloadavg", lambda: next(loads))
    import tunelab.cpu  # the waiting is tunelab's (wait_until_idle), which the sweep's serving pass shares

    monkeypatch.setattr(tunelab.cpu.time, "sleep", lambda s: None)
    assert results.check_idle(max_load=1.0, wait_s=60) == {"load_before": (0.5, 1.0, 1.0), "busy": False}


def test_median_range_formatting():
    assert results.median_range([3.0, 1.0, 2.0]) == "2.0 (1.0–3.0)"
    assert results.median_range([1.234, 1.5, 1.1, 1.9], 2, "x") == "1.37x (1.10–1.90x)"
    assert results.median_range([1234.5, 2000.0, 1500.0], 0) == "1,500 (1,234–2,000)"  # thousands separated
    assert results.median_range([18.24, 17.9, 18.5], 1, "%") == "18.2% (17.9–18.5%)"
    assert results.median_range([2.0, 4.0]) == "3.0 (2.0–4.0, n=2)"  # fewer than 3: the count shows
    assert results.median_range([]) == "n/a"


def test_table():
    assert results.table(["a", "b"], [[1, "x"], [2.5, "y"]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |"
