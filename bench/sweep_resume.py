"""How long a sweep takes when everything is already in its results store, against the first run.

A tiny random Llama and 30 tiny examples (bench/tiny.py: the tests' tiny model and sweep, with the
real SmolLM2 tokenizer) keep the first run short; the ratio first/second is the figure. The second
run must train and evaluate nothing (asserted). Each round starts from an empty store (first run,
then second run); figures are median (min–max) over `--repeats` rounds. The section replaces its own
in bench/RESULTS.md.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_resume.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/sweep_resume.py`
from bench import harness, results  # noqa: E402

TITLE = "Experiments stage (bench/sweep_resume.py)"
BENCH = harness.Bench(__file__)


def main(argv=None) -> None:
    parser = BENCH.parser(__doc__)  # --repeats: rounds, each from an empty results store
    args = BENCH.parse(parser, argv)
    idle = harness.check_idle(args)

    import torch

    torch.set_num_threads(args.threads)
    from bench.tiny import make_tiny_model, write_sweep
    from tunelab.compare.sweep import sweep_cli
    from tunelab.models import resolve_model

    firsts, seconds = [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            model = make_tiny_model(tmp / "tiny", resolve_model("smollm2-135m-instruct").path)
            sweep = write_sweep(tmp, model)
            t0 = time.perf_counter()
            first = sweep_cli(sweep)
            t1 = time.perf_counter()
            second = sweep_cli(sweep)
            t2 = time.perf_counter()
        assert first["done"] == 4 and second == {"done": 0, "skipped": 4, "failed": []}, (first, second)
        firsts.append(t1 - t0)
        seconds.append(t2 - t1)
        print(f"round {r}: first run {firsts[-1]:.1f} s, second run {seconds[-1]:.2f} s", flush=True)
    rows = [
        [
            "tiny sweep (random 2-layer Llama, reference + 3 variants × 2 steps), in one process",
            results.median_range(firsts, 1, " s"),
            results.median_range(seconds, 2, " s"),
            results.median_range([a / b for a, b in zip(firsts, seconds)], 0, "x"),
        ]
    ]
    body = (
        "The second run trains and evaluates nothing (asserted here and in tests/test_compare_sweep.py). "
        "The sweep's recipes (bench/tiny.py, the tests' sweep) train with 1 thread whatever `--threads` says, "
        "so the torch threads above are the sweep's.\n\n"
    ) + results.table(["what", "first run", "second run (all in the store)", "ratio first/second"], rows)
    harness.write_section(args, TITLE, body, idle)


if __name__ == "__main__":
    main()
