"""bench/train_throughput.py --smoke --ablation: every configuration trains on the tiny model and the section is written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import run_bench_section

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "train_throughput.py")
bench_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_train)


def test_smoke_run_writes_its_section(tmp_path, tiny_model_dir):
    results = tmp_path / "RESULTS.md"
    text = run_bench_section(results, bench_train, ["--smoke", "--ablation", "--model", str(tiny_model_dir), "--threads", "1"])
    assert "- command: `python bench/train_throughput.py --smoke --ablation" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "configuration" not in line]
    names = [row.split(" | ")[0][2:] for row in rows]
    assert names == [
        bench_train.TRL_BEST,
        bench_train.TRL_OLD,
        bench_train.TUNELAB,
        *bench_train.ABLATION,
        bench_train.LAST_STEP,
        *bench_train.CANDIDATES,
    ]
    number = r"[\d,.]+"
    for row in rows:  # tokens/s, ratio, MFU (one round: n=1), validation loss, peak memory, tokens: numbers, not placeholders
        cells = rf"{number} \({number}–{number}, n=1\) \| {number}x \({number}–{number}x, n=1\) \| {number}% \({number}–{number}%, n=1\)"
        assert re.search(rf"\| {cells} \| \d+\.\d{{4}} \| [\d,]+ \| [\d,]+ \([\d,]+\) \|$", row), row
    # TRL best and tunelab trained on the same tokens and answer tokens; the old TRL configuration on every token
    tokens = {name: row.rsplit(" | ", 1)[1] for name, row in zip(names, rows)}
    assert tokens[bench_train.TRL_BEST] == tokens[bench_train.TUNELAB]
    total = tokens[bench_train.TRL_OLD].split(" (")[0]
    assert tokens[bench_train.TRL_OLD] == f"{total} ({total}) |"
    assert "GFLOP with the loss on answers" in text and "GFLOP/s" in text


def test_profile_smoke_run_writes_its_section(tmp_path, tiny_model_dir):
    spec = importlib.util.spec_from_file_location("bench_profile", ROOT / "bench" / "train_profile.py")
    bench_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_profile)
    text = run_bench_section(tmp_path / "RESULTS.md", bench_profile, ["--smoke", "--model", str(tiny_model_dir), "--threads", "1"])
    shares = [float(m) for m in re.findall(r"^\| [a-z -]+ \| ([\d.]+)% \|$", text, re.MULTILINE)]
    assert shares and abs(sum(shares) - 100) < 0.5  # every operator's self time is in one family
    assert re.search(r"^\| `aten::mm` \| matmul \| [\d,]+ \| [\d,]+ \| [\d.]+% \|$", text, re.MULTILINE)


def test_candidates_alone_or_within_the_ablation_not_both():
    assert bench_train.parse_args(["--candidates"]).candidates
    with pytest.raises(SystemExit) as stop:  # argparse's usage error, saying to give one of them
        bench_train.parse_args(["--ablation", "--candidates"])
    assert stop.value.code == 2


def test_every_row_trains_in_the_precision_that_pays_on_this_cpu():
    """TRL at its best and every tunelab row use bf16 only where tunelab.cpu says bf16 matmuls pay: on a CPU
    without AVX512-BF16 or AMX, torch emulates bf16 at under 1% of fp32's speed, and a bf16 TRL there would be
    a weakened peer."""
    from tunelab.cpu import cpu

    pays = cpu().bf16_matmul
    assert bench_train.BF16 is pays and bench_train.harness.BF16 is pays
    settings = [*bench_train.ABLATION.values(), *bench_train.CANDIDATES.values()]
    assert any(s.get("precision") == "bf16" or s.get("base_dtype") == "bfloat16" for s in settings) is pays
    assert bench_train.DESCRIBE[bench_train.TRL_BEST].startswith("bf16" if pays else "fp32")
    assert ("bf16 autocast" in bench_train.DESCRIBE[bench_train.TUNELAB]) is pays


def test_another_model_has_a_section_of_its_own_in_every_training_bench():
    default, gemma = bench_train.parse_args([]), bench_train.parse_args(["--model", "gemma3-270m"])
    profile = "Where a training step's time goes (bench/train_profile.py)"
    assert bench_train.section_title(default, profile) == profile
    assert bench_train.section_title(gemma, profile) == "Where a training step's time goes on gemma3-270m (bench/train_profile.py)"
    assert bench_train.section_title(gemma) == "Training throughput on gemma3-270m (bench/train_throughput.py)"


def test_profile_files_a_compiled_graph_by_what_calls_it():
    """A compiled graph's name is a hash: the profile names and files it by the autograd function it runs under, and
    one under neither the loss nor attention (a compiled norm or MLP) as fused elementwise work, not as attention."""
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("bench_profile", ROOT / "bench" / "train_profile.py")
    bench_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_profile)

    def event(name: str, *callers: str):
        parent = None
        for caller in reversed(callers):  # outermost last
            parent = SimpleNamespace(name=caller, cpu_parent=parent)
        return SimpleNamespace(name=name, cpu_parent=parent)

    graph = "CompiledFxGraph fabc123"
    assert bench_profile.event_name_and_family(event(graph, "aten::view", "CausalAttentionBackward")) == (
        "compiled graph: attention's backward",
        "attention",
    )
    assert bench_profile.event_name_and_family(event(graph, "ChunkedAnswerLoss")) == (
        "compiled graph: the answer loss's kernel",
        "softmax and loss",
    )
    assert bench_profile.event_name_and_family(event(graph, "CompiledFunctionBackward")) == bench_profile.OTHER_COMPILED_GRAPH
    assert bench_profile.OTHER_COMPILED_GRAPH[1] == "elementwise and reductions"
    assert bench_profile.event_name_and_family(event("TorchDynamo Cache Lookup")) == ("TorchDynamo Cache Lookup", "compiled-code dispatch")
    assert bench_profile.event_name_and_family(event("aten::bmm", "CausalAttentionBackward")) == ("aten::bmm", "attention")
