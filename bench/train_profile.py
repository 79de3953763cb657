"""Where a training step's time goes on this CPU: torch.profiler's operator totals for tunelab's step.

    python bench/train_profile.py [--examples 48] [--steps 3] [--threads 2] [--model smollm2-135m-instruct]
    python bench/train_profile.py --base-dtype float32                     # another step (StepChoices.base_dtype)
    python bench/train_profile.py --compiled-norms-and-mlps                # another (StepChoices.compiled_norms_and_mlps)
    python bench/train_profile.py --smoke --model DIR --results FILE       # checks the bench runs

The step is bench/train_throughput.py's tunelab row (its recipe: LoRA r16 on every linear layer,
batches of 8 Alpaca examples, bf16 autocast where the CPU has it, padding-free packing, logits at
answer tokens) trained by `train_recipe`; a Trainer callback (train_recipe's public `callbacks`)
profiles `--steps` whole steps after the first, which warms up. Self CPU time of each operator, in
the families the step's cost is discussed in (docs/training.md), and the operators that take the
most. Profiling slows the step a little; the shares, not the seconds, are the figure. The section
is keyed by this CPU in bench/RESULTS.md (bench/results.py), beside another CPU's profile, and by the
model: another model than the default has a section of its own.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/train_profile.py`
from bench import harness  # noqa: E402
from bench.train_throughput import DEFAULT_MODEL, examples, section_title, tunelab_recipe  # noqa: E402

TITLE = "Where a training step's time goes (bench/train_profile.py)"
BENCH = harness.Bench(__file__, smoke={"examples": 12, "steps": 1}, repeats=None)
TOP = 15
# (family, operator names or name fragments): the first family whose fragment is in an operator's name takes it
# The step runs eager. Its compiled graphs (`CompiledFxGraph`) are attention's backward (tunelab/train/attention.py),
# whose five matmuls are its `aten::bmm` calls (no other layer of the step calls bmm), so they count as attention, and
# the answer loss's kernel (tunelab/train/answer_loss.py), told apart by where it is called (`event_name_and_family`);
# with --compiled-norms-and-mlps, the norms' and MLPs' graphs too: fused elementwise work (their matmuls are aten::mm).
FAMILIES = [
    ("attention", ("attention", "sdpa", "CausalAttention", "aten::bmm")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::baddbmm", "mkldnn")),
    ("softmax and loss", ("softmax", "nll_loss", "cross_entropy")),
    ("casts and copies", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("fills", ("aten::fill_", "aten::zero_")),
    ("optimizer", ("_foreach_", "addcdiv", "addcmul", "lerp")),
    # the calls into compiled code: dynamo's guards, AOT autograd's wrappers (the graphs themselves are named below)
    ("compiled-code dispatch", ("TorchDynamo Cache Lookup", "Pregraph bytecode", "CompiledFunction", "Torch-Compiled Region")),
    ("elementwise and reductions", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::rsqrt", "aten::mean",
                                    "aten::sum", "aten::silu", "aten::neg", "aten::cat", "aten::where", "aten::sigmoid", "aten::exp",
                                    "aten::gelu", "aten::tanh", "aten::cos", "aten::sin", "aten::masked_fill")),
]  # fmt: skip


def family(name: str) -> str:
    return next((fam for fam, fragments in FAMILIES if any(f in name for f in fragments)), "other")


# (what calls a compiled graph, the graph's name in the tables, its family): a graph is named by the autograd function
# it runs under, since its own name is a hash. Any other is a compiled module's (the norms and MLPs): inductor's own
# kernels there are the fused elementwise work, its matmuls run as aten::mm
COMPILED_GRAPHS = [
    ("ChunkedAnswerLoss", "compiled graph: the answer loss's kernel", "softmax and loss"),
    ("CausalAttention", "compiled graph: attention's backward", "attention"),
]
OTHER_COMPILED_GRAPH = ("compiled graph: norms and MLPs (fused elementwise)", "elementwise and reductions")


def event_name_and_family(event) -> tuple[str, str]:
    """A profiled event's name and `family`; a compiled graph named and filed by the function that calls it."""
    if "CompiledFxGraph" not in event.name:
        return event.name, family(event.name)
    parent = event.cpu_parent
    while parent is not None:
        for caller, name, fam in COMPILED_GRAPHS:
            if caller in parent.name:
                return name, fam
        parent = parent.cpu_parent
    return OTHER_COMPILED_GRAPH


def profiled_step(args) -> tuple[list[tuple[str, str, int, float]], float]:
    """([(operator, family, calls, self CPU ms)] over the profiled steps, their wall seconds)."""
    import time

    import torch
    from transformers import TrainerCallback

    from tunelab.models.resolve import resolve_model
    from tunelab.train.run import StepChoices, frozen_weights_dtype, train_recipe

    class ProfileSteps(TrainerCallback):
        """Profile steps 2 to 1 + `steps` (the first warms up), timing them by the wall clock."""

        def __init__(self, steps: int):
            self.steps, self.profiler, self.seconds = steps, None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.start()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is not None and state.global_step == 1 + self.steps:
                self.seconds = time.perf_counter() - self.start
                self.profiler.stop()

    torch.set_num_threads(args.threads)
    train, _ = examples(args)
    workdir = Path(tempfile.mkdtemp(prefix="train-profile-"))
    recipe = tunelab_recipe(args, resolve_model(args.model).path, train, workdir, max_steps=1 + args.steps)
    callback = ProfileSteps(args.steps)
    step = StepChoices(base_dtype=args.base_dtype, compiled_norms_and_mlps=args.compiled_norms_and_mlps)
    args.stored_as = frozen_weights_dtype(recipe, step)  # "auto" resolved as training resolves it, for the section
    train_recipe(recipe, step=step, callbacks=[callback])
    if callback.profiler is None or not callback.seconds:
        sys.exit(f"only {len(train)} examples: too few for {1 + args.steps} steps of 8; raise --examples")
    totals: dict[tuple[str, str], list] = {}  # (operator, family) -> [calls, self CPU ms]
    for event in callback.profiler.events():
        if event.self_cpu_time_total > 0:
            total = totals.setdefault(event_name_and_family(event), [0, 0.0])
            total[0], total[1] = total[0] + 1, total[1] + event.self_cpu_time_total / 1000
    return [(name, fam, calls, ms) for (name, fam), (calls, ms) in totals.items()], callback.seconds


def section(args, ops: list[tuple[str, str, int, float]], seconds: float) -> str:
    total = sum(ms for *_, ms in ops)
    by_family: dict[str, float] = {}
    for _, fam, _, ms in ops:
        by_family[fam] = by_family.get(fam, 0.0) + ms
    lines = [
        f"- model: {args.model}; {args.steps} profiled step(s) of 8 examples after one warm-up step; "
        f"{args.threads} threads; frozen base weights stored as {args.stored_as}"
        + (" (the default on this CPU)" if args.base_dtype == "auto" else "")
        + ("; each RMSNorm and MLP module compiled (StepChoices.compiled_norms_and_mlps)" if args.compiled_norms_and_mlps else ""),
        f"- wall time of the profiled steps: {seconds:.2f} s; self CPU time of every operator: {total / 1000:.2f} s",
        "",
        "| family | share of self CPU time |",
        "|---|---|",
        *(f"| {fam} | {ms / total:.1%} |" for fam, ms in sorted(by_family.items(), key=lambda kv: -kv[1])),
        "",
        f"The {TOP} operators taking the most:",
        "",
        "| operator | family | calls | self CPU ms | share |",
        "|---|---|---|---|---|",
        *(
            f"| `{name}` | {fam} | {calls:,} | {ms:,.0f} | {ms / total:.1%} |"
            for name, fam, calls, ms in sorted(ops, key=lambda op: -op[3])[:TOP]
        ),
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = BENCH.parser(__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--examples", type=int, default=48, help="training examples: at least 8 × (1 + --steps)")
    parser.add_argument("--steps", type=int, default=3, help="steps profiled after the warm-up step")
    parser.add_argument(
        "--base-dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="StepChoices.base_dtype; auto: training's default"
    )
    parser.add_argument(
        "--compiled-norms-and-mlps", action="store_true", help="StepChoices.compiled_norms_and_mlps: regional compilation, not a default"
    )
    args = BENCH.parse(parser, argv)
    args.val, args.seed = 0, 0  # what bench/train_throughput's examples and recipe read: no held-out rows, seed 0
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)
    ops, seconds = profiled_step(args)
    # the default step has the plain title; another model or dtype asked for has a section of its own
    title = section_title(args, TITLE)
    title = title if args.base_dtype == "auto" else f"{title[:-1]}, base weights in {args.base_dtype})"
    title = f"{title[:-1]}, norms and MLPs compiled)" if args.compiled_norms_and_mlps else title
    harness.write_section(args, title, section(args, ops, seconds), idle)


if __name__ == "__main__":
    main()
