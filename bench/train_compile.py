"""torch.compile in training: what compiling costs up front and what it buys per step, through `tunelab train`.

    python bench/train_compile.py [--examples 96] [--threads 2] [--repeats 3]
    python bench/train_compile.py --smoke --model DIR --results FILE   # a few examples, one round: checks the bench runs

Both rows are `train_recipe` with the recipe's defaults (bf16 autocast where bf16 matmuls pay, else fp32; padding-free packing,
attention per example, logits at answer tokens) on bench/train_throughput.py's recipe and examples
(LoRA r16/α32 on every linear layer, batches of 8, lr 2e-4 constant, one epoch of the first
`--examples` examples of ../shared/data/alpaca_en_demo.json), one with `train.compile: true`. Each trains in its own
process with an empty inductor cache of its own (TORCHINDUCTOR_CACHE_DIR), so the compile cost is
the one a first run pays. Rounds are interleaved (each row once per round, the order reversed
every other round); round r trains with seed r.

A callback notes the wall clock and the Trainer's count of input tokens at the end of every step.
- first steps: seconds from the start of training to the end of step `--warmup` (the compiler works
  during the first steps: the first compile, and the graphs of the first shapes it meets).
- steady tokens/s: tokens over seconds from the end of step `--warmup` to the last step.
- break-even: how many examples a run must train on before the compiled run has caught up, from the
  median extra seconds of its first steps and the median steady rates.
The section replaces its own in bench/RESULTS.md (bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/train_compile.py`
from bench import harness, results  # noqa: E402
from bench.train_throughput import BATCH, DEFAULT_MODEL, LORA, examples, section_title, tunelab_recipe  # noqa: E402

TITLE = "torch.compile in training (bench/train_compile.py)"
BENCH = harness.Bench(__file__, smoke={"examples": 16, "warmup": 1})
EAGER, COMPILED = "tunelab (eager)", "tunelab with train.compile: true"


def step_clock():
    """A Trainer callback recording (seconds since training began, input tokens seen) at the end of every step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.marks = time.perf_counter(), []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter() - self.start, int(state.num_input_tokens_seen)))

    return StepClock()


def worker(kind: str, args) -> dict:
    """One training run through train_recipe; returns its step marks and its logged losses."""
    import torch

    from tunelab.io import read_jsonl
    from tunelab.models.resolve import resolve_model
    from tunelab.train.run import train_recipe

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="compile-bench-"))
    train, _ = examples(args)
    # a loss every step, so the two rows' losses are compared at every step
    recipe = tunelab_recipe(args, resolve_model(args.model).path, train, workdir, logging_steps=1, compile=kind == COMPILED)
    clock = step_clock()
    run = train_recipe(recipe, callbacks=[clock])
    losses = [r["loss"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r]
    return {"kind": kind, "seed": args.seed, "marks": clock.marks, "losses": losses, "examples": len(train)}


def in_worker(args, kind: str, seed: int) -> dict:
    """One row in a fresh process with an empty inductor cache of its own: the compile cost a first run pays."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-cache-")}
    return BENCH.in_worker(args, kind, seed, worker, env=env)


def figures(run: dict, warmup: int) -> dict:
    """Seconds to the end of step `warmup`, and tokens/s after it."""
    marks = run["marks"]
    (t0, n0), (t1, n1) = marks[warmup - 1], marks[-1]
    return {"first_seconds": t0, "steady_tps": (n1 - n0) / (t1 - t0), "tokens": n1}


def section(args, runs: dict[str, list[dict]]) -> str:
    eager = [figures(r, args.warmup) for r in runs[EAGER]]
    compiled = [figures(r, args.warmup) for r in runs[COMPILED]]
    speedups = [c["steady_tps"] / e["steady_tps"] for e, c in zip(eager, compiled)]
    extra = [c["first_seconds"] - e["first_seconds"] for e, c in zip(eager, compiled)]
    examples_trained = runs[EAGER][0]["examples"]
    tokens_per_example = eager[0]["tokens"] / examples_trained
    e_tps, c_tps = statistics.median(f["steady_tps"] for f in eager), statistics.median(f["steady_tps"] for f in compiled)
    saved_per_token = 1 / e_tps - 1 / c_tps
    break_even = (
        f"{statistics.median(extra) / saved_per_token / tokens_per_example:,.0f} examples"
        if saved_per_token > 0
        else "never (no faster per step)"
    )
    rows = [
        [
            EAGER,
            results.median_range([f["first_seconds"] for f in eager], 1, " s"),
            results.median_range([f["steady_tps"] for f in eager]),
            "1.00x",
        ],
        [
            COMPILED,
            results.median_range([f["first_seconds"] for f in compiled], 1, " s"),
            results.median_range([f["steady_tps"] for f in compiled]),
            results.median_range(speedups, 2, "x"),
        ],
    ]
    loss_gap = max(abs(a - b) for e, c in zip(runs[EAGER], runs[COMPILED]) for a, b in zip(e["losses"], c["losses"]))
    steps = len(runs[EAGER][0]["marks"])
    return "\n\n".join(
        [
            f"Model `{args.model}`, LoRA r{LORA['r']}/α{LORA['lora_alpha']} on every linear layer, batch {BATCH}, one epoch of "
            f"{examples_trained} examples of "
            f"alpaca_en_demo.json ({steps} steps, {eager[0]['tokens']:,} tokens), torch threads {args.threads}, "
            f"{args.repeats} interleaved round(s), each run in a fresh process with an empty inductor cache. "
            "Figures are median (min–max) over the rounds.",
            results.table(
                ["configuration", f"seconds to the end of step {args.warmup}", "steady tokens/s (after it)", "steady speed-up"], rows
            ),
            f"Compiling costs {statistics.median(extra):,.0f} s more in the first {args.warmup} steps; at the steady rates above a "
            f"run breaks even after {break_even} ({tokens_per_example:,.0f} tokens each). Largest gap between the two rows' "
            f"logged training losses at the same step and seed: {loss_gap:.4f}.",
        ]
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = BENCH.parser(__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=4, help="steps counted as the compiler's (the steady rate starts after them)")
    parser.set_defaults(val=0)  # bench/train_throughput.py's examples() also holds out `val` examples; none here
    return BENCH.parse(parser, argv, worker)


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)

    def say(run: dict) -> str:
        f = figures(run, args.warmup)
        return f"{f['first_seconds']:.1f} s to step {args.warmup}, then {f['steady_tps']:.1f} tok/s"

    runs = harness.rounds([EAGER, COMPILED], args.repeats, lambda kind, r: in_worker(args, kind, r), say=say)
    harness.write_section(args, section_title(args, TITLE), section(args, runs), idle)


if __name__ == "__main__":
    main()
