"""bench/harness.py: workers run in processes of their own and report back, a crash can be a result, rounds
interleave, --smoke caps and never writes bench/RESULTS.md. A small real bench script drives it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness, results  # noqa: E402

SCRIPT = '''"""A bench of nothing: each kind reports the process and seed it ran with."""
import os
import signal
import sys

sys.path.insert(0, {root!r})
from bench import harness  # noqa: E402

TITLE = "Nothing (bench/nothing.py)"
BENCH = harness.Bench(__file__, smoke={{"items": 2}})


def measure_one(kind, args):
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    return {{"kind": kind, "pid": os.getpid(), "seed": args.seed, "items": args.items}}


def parse_args(argv=None):
    parser = BENCH.parser(__doc__)
    parser.add_argument("--items", type=int, default=10)
    return BENCH.parse(parser, argv, measure_one)


def main(argv=None):
    parse_args(argv)
    raise AssertionError("this script is only ever started as a worker, which ends in parse_args")


if __name__ == "__main__":
    main()
'''


@pytest.fixture
def nothing(tmp_path):
    path = tmp_path / "nothing.py"
    path.write_text(SCRIPT.format(root=str(ROOT)))
    spec = importlib.util.spec_from_file_location("nothing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_runs_in_a_process_of_its_own_with_the_bench_command_line(nothing, tmp_path):
    args = nothing.parse_args(["--items", "7", "--results", str(tmp_path / "R.md")])
    assert args.command == [str(tmp_path / "nothing.py"), "--items", "7", "--results", str(tmp_path / "R.md")] and args.worker is None
    figures = nothing.BENCH.in_worker(args, "a", 3, nothing.measure_one)
    assert figures["kind"] == "a" and figures["seed"] == 3 and figures["items"] == 7
    assert figures["pid"] != nothing.os.getpid()
    crashed = nothing.BENCH.in_worker(args, "crash", 0, nothing.measure_one, crash_is_result=True)
    assert crashed["crashed"] == "signal SIGSEGV"
    with pytest.raises(SystemExit, match="crash: the worker process failed \\(signal SIGSEGV\\)"):
        nothing.BENCH.in_worker(args, "crash", 0, nothing.measure_one)


def test_smoke_caps_runs_here_and_keeps_off_the_results_file(nothing, tmp_path):
    args = nothing.parse_args(["--smoke", "--results", str(tmp_path / "R.md")])
    assert (args.items, args.repeats, args.allow_busy) == (2, 1, True)
    figures = nothing.BENCH.in_worker(args, "a", 5, nothing.measure_one)
    assert figures["pid"] == nothing.os.getpid() and figures["seed"] == 5
    with pytest.raises(SystemExit):  # argparse's error: a smoke run's figures never go to bench/RESULTS.md
        nothing.parse_args(["--smoke", "--results", str(results.RESULTS)])


def test_rounds_interleave_and_reverse_every_other_round(capsys):
    order, before = [], []
    done = harness.rounds(["a", "b", "c"], 3, lambda kind, r: order.append((r, kind)) or f"{kind}{r}", before_round=before.append, say=str)
    assert before == [0, 1, 2]
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"), (2, "a"), (2, "b"), (2, "c")]
    assert done == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"], "c": ["c0", "c1", "c2"]}
    assert "round 2/3: c: c1" in capsys.readouterr().out
