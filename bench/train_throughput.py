"""Training throughput: tunelab against TRL's SFTTrainer at its best on this CPU, with an ablation and MFU.

    python bench/train_throughput.py [--examples 96] [--val 32] [--threads 2] [--repeats 3] [--ablation | --candidates]
    python bench/train_throughput.py --model gemma3-270m [...]            # another catalog model: a section of its own
    python bench/train_throughput.py --smoke --model DIR --results FILE   # a few examples, one round: checks the bench runs

Every configuration trains the same LoRA (r16, α32, every linear layer, no dropout; lr 2e-4
constant; one epoch; batches of 8; at most 512 tokens) of SmolLM2-135M-Instruct (or `--model`) on the same first
`--examples` examples of ../shared/data/alpaca_en_demo.json, each in its own process (so its peak
memory is its own) with the same threads. Rounds are interleaved (every configuration once per
round, the order reversed every other round); round r trains with seed r.

- TRL best: TRL's SFTTrainer at its best on a CPU, `SFTConfig(bf16=True,
  gradient_checkpointing=False, packing=True, packing_strategy="bfd", max_length=512)` (written
  activation_checkpointing, the name transformers 5 gives gradient_checkpointing) on
  prompt/completion data (the prompt is the conversation up to its answer, the completion the
  answer), so the loss is on the answers only. Ratios are against this row. bf16=True where bf16
  matmuls pay (AVX512-BF16 or AMX, tunelab.cpu); elsewhere torch emulates bf16 at under 1% of
  fp32's speed, so TRL at its best runs fp32 there, as tunelab does. (With packing, TRL's
  batch is 8 packed rows of up to 512 tokens: fewer, larger steps than 8 examples.)
- TRL with bf16 off, padded, loss on all tokens, gradient checkpointing on: the configuration this
  bench used to call "TRL defaults" (TRL's own default is bf16 on).
- tunelab: `train_recipe` with the recipe's defaults (bf16 autocast where the CPU has it, no
  gradient checkpointing, padding-free packing, logits only at answer tokens).
- with --ablation, tunelab with all of those choices off (fp32, gradient checkpointing, padded
  batches, logits at every position; no bf16 step where bf16 does not pay), then switched on one at a time, each row adding one to the
  row above; the last step is the tunelab row. Logits at answer tokens only and attention per
  example of a packed row (tunelab/train/attention.py) are not recipe settings but train_recipe's
  `step` (tunelab.train.run.StepChoices): the rows without them get logits at every position and
  transformers' SDPA with its block-diagonal mask over the whole row; so are the loss in chunks, each chunk's
  softmax and gradient as one compiled kernel, and attention's backward as a compiled kernel instead of the CPU flash kernel's, and, where bf16 matmuls pay, the
  frozen base weights stored in bf16 (`StepChoices.base_dtype`) instead of fp32 weights cast under autocast each
  step (the last steps). Candidate rows (--ablation or --candidates) follow: the tunelab row with one choice as it
  was before, the frozen weights in fp32 (only where bf16 matmuls pay), the CPU flash kernel's own attention
  backward and the loss's softmax in eager ops, so that a run without the ablation still measures what each buys;
  and one choice not yet a default, where a C++ compiler exists: each RMSNorm and MLP module compiled
  (`StepChoices.compiled_norms_and_mlps`, regional compilation).
- Attention's compiled backward (and the compiled norms and MLPs) compile once per machine (torch's on-disk cache)
  and load from the cache in every later process: before round 1 an untimed run of 8 examples of each fills the
  cache, so that round 1 is not the only one to pay the compiler (its seconds are in the section).

Tokens/s: the examples' real tokens (chat template applied, no padding) over the Trainer's own
`train_runtime`, the same count and the same clock for every row. TRL best and tunelab must train
on the same tokens and answer tokens (asserted by each worker before it trains); the old TRL
configuration trains on every token. Validation loss: each adapter's answer-token loss on the
same `--val` held-out examples (fp32), mean ± sd over the seeds. Peak memory: the worker's peak RSS.
MFU: model FLOPs per token (tunelab.train.flops.training_flops_per_token; the output projection
counted at the positions the row's loss needs) × tokens/s ÷ the matmul peak in the precision that trains here (bf16 where it pays, else fp32), measured by
this bench before every round (torch.matmul of 4096×576 by 576×1536 for 2 s on the same threads).
The section replaces its own in bench/RESULTS.md (bench/results.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/train_throughput.py`
from bench import harness, results  # noqa: E402
from tunelab.cpu import has_cpp_compiler, peak_rss_mib  # noqa: E402

TITLE = "Training throughput (bench/train_throughput.py)"
BENCH = harness.Bench(__file__, smoke={"examples": 12, "val": 4})
DEFAULT_MODEL = "smollm2-135m-instruct"


def section_title(args, title: str = TITLE) -> str:
    """The default model's section is `title` ("What (bench/script.py)"); another model's has a section of its own
    beside it, "What on MODEL (bench/script.py)", so a run on one model never overwrites another's figures."""
    if args.model == DEFAULT_MODEL or args.smoke:
        return title
    what, script = title.rsplit(" (", 1)
    return f"{what} on {args.model} ({script}"


LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0)
BATCH, LR, MAX_LEN = 8, 2e-4, 512
# every row's precision, TRL at its best's included, is the one that pays here (fp32 where bf16 is emulated)
BF16, PRECISION = harness.BF16, harness.PRECISION
TRL_BEST = "TRL SFTTrainer at its best on CPU"
TRL_OLD = "TRL with bf16 off, padded, loss on all tokens, gradient checkpointing on"
TUNELAB = "tunelab"
DESCRIBE = {
    TRL_BEST: f"{PRECISION}{'' if BF16 else ' (this CPU has no fast bf16 matmul)'}, no gradient checkpointing, packing (bfd), prompt/completion: loss on answers",
    TRL_OLD: "fp32, gradient checkpointing, padded batches, loss on every token",
    TUNELAB: f"`tunelab train` defaults: {'bf16 autocast, frozen base weights stored in bf16' if BF16 else 'fp32 (precision: auto, no fast bf16 matmul here)'}, no gradient checkpointing, padding-free packing with attention per example ({{backward}}), logits at answer tokens, the loss in chunks on a CPU (each chunk's softmax and gradient one compiled kernel)",
}
# which backward attention per example runs in the tunelab row (DESCRIBE's {backward}): attention_backward_compiles()
BACKWARD = {
    True: "its backward compiled",
    False: f"the flash kernel's backward too: {'the compiled one is for narrower heads, train/attention.py' if BF16 else 'the compiled one is for bf16'}",
}
# The ablation: tunelab with its choices off, then on one at a time; each row adds one choice to the row above, and
# the last is TUNELAB. A row's settings are recipe settings, and the choices of the step that are not
# (train_recipe's `step`, tunelab.train.run.StepChoices: answer_logits, attention_per_example, chunked_loss_on_cpu,
# fused_loss_on_cpu, compiled_attention_backward, base_dtype). Where bf16 does not pay there is no bf16 step: every row is fp32, and the
# frozen weights are fp32 in every row (StepChoices.base_dtype "auto"); where it does, they stay fp32 until the last step.
FP32_WEIGHTS = {"base_dtype": "float32"} if BF16 else {}
EAGER_LOSS = {"fused_loss_on_cpu": False}  # packed rows before the loss's compiled kernel: its eager ops (where chunked)
ABLATION = {
    "tunelab, all off": dict(precision="fp32", gradient_checkpointing=True, packing=False),
    **({"+ bf16 autocast": dict(precision="bf16", gradient_checkpointing=True, packing=False)} if BF16 else {}),
    "+ no gradient checkpointing": dict(precision=PRECISION, gradient_checkpointing=False, packing=False),
    "+ padding-free packing (one block-diagonal mask per row)": dict(
        precision=PRECISION, gradient_checkpointing=False, packing=True, answer_logits=False, attention_per_example=False, **EAGER_LOSS
    ),
    "+ attention per example of a packed row": dict(
        precision=PRECISION,
        gradient_checkpointing=False,
        packing=True,
        answer_logits=False,
        compiled_attention_backward=False,
        **EAGER_LOSS,
    ),
    "+ logits at answer tokens only": dict(
        precision=PRECISION,
        gradient_checkpointing=False,
        packing=True,
        chunked_loss_on_cpu=False,
        compiled_attention_backward=False,
        **EAGER_LOSS,
    ),
    "+ answer loss in cache-sized chunks on a CPU": dict(
        precision=PRECISION, gradient_checkpointing=False, packing=True, compiled_attention_backward=False, **EAGER_LOSS
    ),
    "+ each chunk's softmax and gradient one compiled kernel": dict(
        precision=PRECISION, gradient_checkpointing=False, packing=True, compiled_attention_backward=False
    ),
    **({"+ attention's backward compiled": dict(precision=PRECISION, gradient_checkpointing=False, packing=True)} if BF16 else {}),
}
ABLATION = {name: {**settings, **FP32_WEIGHTS} for name, settings in ABLATION.items()}
LAST_STEP = "+ frozen base weights stored in bf16 (= tunelab)" if BF16 else "+ attention's backward compiled (= tunelab)"
# Candidates measured beside tunelab with --ablation or --candidates: each is the tunelab row with one choice changed,
# today each as it was before it became the default. The fp32-weights row only where bf16 matmuls pay (elsewhere the
# frozen weights are fp32 in the tunelab row already).
CANDIDATES = {
    # the default before: the same run measures what bf16 frozen weights buy
    **({"tunelab with frozen base weights in fp32 (the default before)": dict(base_dtype="float32")} if BF16 else {}),
    # the default before issue #25's compiled backward: the same run measures what that change buys
    "tunelab with the CPU flash kernel's attention backward (the default before)": dict(compiled_attention_backward=False),
    # the default before the loss's compiled kernel (eager softmax and gradient, chunks of CPU_CHUNK logits)
    "tunelab with the answer loss's softmax in eager ops (the default before)": dict(fused_loss_on_cpu=False),
}
# not a default yet: each RMSNorm and MLP module compiled (regional compilation), where the compiler can build CPU kernels
REGIONAL = "tunelab with its norms and MLPs compiled (regional torch.compile, not a default)"
if has_cpp_compiler():
    CANDIDATES[REGIONAL] = dict(compiled_norms_and_mlps=True)
SMOKE_QA = [
    ("What is 2 + 2?", "2 + 2 is 4."),
    ("Name a colour.", "Blue is a colour."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Say hello in French.", "Bonjour."),
    ("What do bees make?", "Bees make honey."),
    ("How many legs does a spider have?", "A spider has eight legs."),
]


# ---------------------------------------------------------------- the examples
def examples(args) -> tuple[list[dict], list[dict]]:
    """(training, held-out) examples as conversations."""
    if args.smoke:
        rows = [
            {"messages": [{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": a}]}
            for i in range(3)
            for q, a in SMOKE_QA
        ]
        return rows[: args.examples], rows[args.examples : args.examples + args.val]
    from tunelab.data import load_examples
    from tunelab.paths import shared_data_dir

    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is needed for this benchmark")
    rows = load_examples(str(data / "alpaca_en_demo.json"))
    return rows[: args.examples], rows[args.examples : args.examples + args.val]


def rendered_tokens(tokenizer, rows: list[dict]) -> tuple[int, int]:
    """(tokens, answer tokens) of the examples as tunelab renders them for training."""
    from tunelab.data.render import IGNORE_INDEX, render_example

    rendered = [render_example(tokenizer, r["messages"], MAX_LEN) for r in rows]
    return sum(len(e["input_ids"]) for e in rendered), sum(label != IGNORE_INDEX for e in rendered for label in e["labels"])


def answer_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean loss over the answer tokens of `rows`, one example at a time, in fp32."""
    import torch

    from tunelab.data.render import render_example
    from tunelab.train.collate import PaddedCollator

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            batch = PaddedCollator(tokenizer.pad_token_id)([render_example(tokenizer, row["messages"], MAX_LEN)])
            n = int((batch["labels"][0, 1:] != -100).sum())
            total += model(**batch).loss.item() * n
            count += n
    return total / count


# ---------------------------------------------------------------- the workers (one configuration, one process)
def trl_worker(kind: str, args, model_path: Path, tokenizer, train: list[dict], workdir: Path):
    """TRL's SFTTrainer + PEFT LoRA; returns (model, seconds, tokens, answer tokens, peak RSS in MiB)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelab.models.load import load_causal_lm

    if kind == TRL_BEST:
        data = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train]
        settings = dict(bf16=BF16, activation_checkpointing=False, packing=True, packing_strategy="bfd")
    else:
        data = [{"messages": r["messages"]} for r in train]
        settings = dict(bf16=False, activation_checkpointing=True, packing=False)
    cfg = SFTConfig(**harness.trl_arguments(workdir, batch=BATCH, learning_rate=LR, max_length=MAX_LEN, seed=args.seed), **settings)
    trainer = SFTTrainer(
        model=load_causal_lm(model_path),
        args=cfg,
        train_dataset=Dataset.from_list(data),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA),
    )
    prepared = trainer.train_dataset
    tokens = sum(len(ids) for ids in prepared["input_ids"])
    answers = sum(label != -100 for labels in prepared["labels"] for label in labels)
    if kind == TRL_BEST:
        ours = rendered_tokens(tokenizer, train)
        assert (tokens, answers) == ours, f"TRL prepared {tokens} tokens ({answers} answer tokens), tunelab {ours[0]} ({ours[1]})"
    result = trainer.train()
    return trainer.model, result.metrics["train_runtime"], tokens, answers, peak_rss_mib()


def tunelab_recipe(args, model_path: Path, train: list[dict], workdir: Path, **settings):
    """The bench's `tunelab train` recipe on the examples `train` (written into `workdir`): every row's LoRA,
    batch, learning rate and data, no splitting or filtering, plus the train `settings` a row changes."""
    from tunelab.config import recipe_from_dict
    from tunelab.io import atomic_write_jsonl
    from tunelab.runs import DEFAULT_RUNS_DIR

    data_file = workdir / "train.jsonl"
    atomic_write_jsonl(data_file, train)
    data = {"sources": [{"path": str(data_file), "format": "messages"}], "dedup": "none", "clean": False}
    data.update(test_fraction=0, validation_fraction=0, max_tokens=100000)
    lora = {"r": LORA["r"], "alpha": LORA["lora_alpha"], "dropout": 0.0, "target_modules": "all_linear"}
    train_cfg = {"epochs": 1, "batch_size": BATCH, "learning_rate": LR, "lr_scheduler": "constant", "warmup_ratio": 0}
    train_cfg.update(max_seq_length=MAX_LEN, threads=args.threads, save_steps=100000, tensorboard=False, seed=args.seed, lora=lora)
    # eager, whatever the run's length (train.compile: auto would compile a long one, and TRL here does not):
    # bench/train_compile.py measures compiling
    train_cfg["compile"] = False
    return recipe_from_dict(
        {
            "name": "bench",
            "output_dir": str(workdir / DEFAULT_RUNS_DIR),
            "model": str(model_path),
            "data": data,
            "train": {**train_cfg, **settings},
        }
    )


def tunelab_worker(kind: str, args, model_path: Path, tokenizer, train: list[dict], workdir: Path):
    """`train_recipe`, with the recipe's defaults or an ablation step; returns (model, seconds, tokens, answer tokens, peak RSS in MiB)."""
    from dataclasses import fields

    from tunelab.io import read_jsonl
    from tunelab.models.hf_chat import load_hf_model
    from tunelab.runs import RunDir
    from tunelab.train.run import StepChoices, train_recipe

    settings = ABLATION.get(kind) or CANDIDATES.get(kind, {})
    step_fields = {f.name for f in fields(StepChoices)}
    recipe = tunelab_recipe(args, model_path, train, workdir, **{k: v for k, v in settings.items() if k not in step_fields})
    run = train_recipe(recipe, step=StepChoices(**{k: v for k, v in settings.items() if k in step_fields}))
    peak = peak_rss_mib()  # before the trained model is loaded again to score it
    tokens, answers = rendered_tokens(tokenizer, read_jsonl(RunDir(run).split("train")))
    assert (tokens, answers) == rendered_tokens(tokenizer, train), "tunelab's data stage changed the examples"
    model, _, _ = load_hf_model(run)
    return model, json.loads((run / "train" / "summary.json").read_text())["train_seconds"], tokens, answers, peak


def worker(kind: str, args) -> dict:
    import torch

    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model

    torch.set_num_threads(args.threads)
    model_path = resolve_model(args.model).path
    tokenizer = load_tokenizer(model_path)
    train, val = examples(args)
    workdir = Path(tempfile.mkdtemp(prefix="train-bench-"))
    work = trl_worker if kind in (TRL_BEST, TRL_OLD) else tunelab_worker
    model, seconds, tokens, answers, peak_rss = work(kind, args, model_path, tokenizer, train, workdir)
    real_tokens = rendered_tokens(tokenizer, train)[0]  # the same count for every row
    return {
        "kind": kind,
        "seed": args.seed,
        "examples": len(train),
        "real_tokens": real_tokens,
        "trained_tokens": tokens,
        "answer_tokens": answers,
        "seconds": seconds,
        "tokens_per_second": real_tokens / seconds,
        "val_loss": answer_loss(model, tokenizer, val),
        "peak_rss_mib": peak_rss,
    }


# ---------------------------------------------------------------- rounds, FLOPs and the section
def attention_backward_compiles(args) -> bool:
    """Whether the tunelab row's attention backward is the compiled kernel (train/attention.py; Gemma-3's 256-wide
    heads keep the flash kernel's)."""
    import torch
    from transformers import AutoConfig

    from tunelab.models.resolve import resolve_model
    from tunelab.train.attention import backward_compiles

    config = AutoConfig.from_pretrained(resolve_model(args.model).path)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return backward_compiles(head_dim, torch.bfloat16 if BF16 else torch.float32)


def warm_compile_cache(args, compiled: bool, kinds: list[str]) -> float | None:
    """Seconds of untimed runs of 8 examples, which fill torch's on-disk cache with attention's compiled backward (a
    tunelab run) and the compiled norms and MLPs (that candidate's run, when it is measured), so that round 1's rows
    load them like every later process instead of compiling them (None: nothing compiles here)."""
    warm = ([TUNELAB] if compiled else []) + ([REGIONAL] if REGIONAL in kinds else [])
    if not warm or args.smoke:
        return None
    start = time.perf_counter()
    for kind in warm:
        BENCH.in_worker(argparse.Namespace(**{**vars(args), "argv": [*args.argv, "--examples", "8", "--val", "2"]}), kind, 0, worker)
    return time.perf_counter() - start


def measure(args, kinds: list[str]) -> tuple[dict[str, list[dict]], list[float]]:
    """Every configuration once per round, each in a worker process; the matmul peak (bf16 or fp32, what trains
    here) before each round."""
    from tunelab.train.flops import matmul_peak_flops, peak_dtype

    peaks = []

    def peak(r: int) -> None:
        peaks.append(matmul_peak_flops(peak_dtype(), seconds=0.2 if args.smoke else 2.0))
        print(f"round {r + 1}: {PRECISION} matmul peak {peaks[-1] / 1e9:,.0f} GFLOP/s", flush=True)

    runs = harness.rounds(
        kinds,
        args.repeats,
        lambda kind, r: {**BENCH.in_worker(args, kind, r, worker), "matmul_peak": peaks[-1]},
        say=lambda result: f"{result['tokens_per_second']:.1f} tok/s, validation loss {result['val_loss']:.4f}",
        before_round=peak,
    )
    return runs, peaks


def lora_flops_per_token(args, logits_fraction: float) -> float:
    """Model FLOPs per token of the LoRA every row trains (the model built on the meta device: no weights loaded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models.resolve import resolve_model
    from tunelab.train.flops import training_flops_per_token

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(args.model).path))
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA))
    return training_flops_per_token(model, logits_fraction)


def mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def section(args, runs: dict[str, list[dict]], peaks: list[float], flops: dict[str, float], compiled: bool, warm_s: float | None) -> str:
    first = runs[TUNELAB][0]
    best = runs[TRL_BEST]
    header = [
        "configuration",
        "settings",
        "tokens/s",
        "vs TRL best",
        "MFU",
        "validation loss (mean ± sd)",
        "peak RSS (MiB)",
        "tokens trained (answer tokens)",
    ]

    def row(kind: str, name: str, settings: str) -> list:
        rows = runs[kind]
        tps = [r["tokens_per_second"] for r in rows]
        mfu = [flops[kind] * r["tokens_per_second"] / r["matmul_peak"] * 100 for r in rows]
        ratios = [r["tokens_per_second"] / b["tokens_per_second"] for r, b in zip(rows, best)]
        return [
            name,
            settings,
            results.median_range(tps),
            results.median_range(ratios, 2, "x"),
            results.median_range(mfu, 1, "%"),
            mean_sd([r["val_loss"] for r in rows]),
            f"{statistics.median(r['peak_rss_mib'] for r in rows):,.0f}",
            f"{rows[0]['trained_tokens']:,} ({rows[0]['answer_tokens']:,})",
        ]

    lines = [
        f"Model `{args.model}`, LoRA r{LORA['r']}/α{LORA['lora_alpha']} on every linear layer, batch {BATCH}, lr {LR:g} constant, one epoch of "
        f"{first['examples']} examples of {'the built-in smoke set' if args.smoke else 'alpaca_en_demo.json'} ({first['real_tokens']:,} real tokens), "
        f"torch threads {args.threads}, {args.repeats} interleaved round(s), round r with seed r; validation loss on {args.val} held-out examples "
        "(answer tokens). Tokens/s: real tokens over the Trainer's train_runtime; figures are median (min–max) over the rounds."
        + (
            f" Before round 1, untimed runs of 8 examples filled torch's compile cache ({warm_s:.0f} s in all, once per machine: "
            "a tunelab run where attention's backward compiles, the norms-and-MLPs candidate's where it is measured); "
            "every row then loads what it compiles."
            if warm_s is not None
            else ""
        ),
        "",
        results.table(header, [row(k, k, DESCRIBE[k].format(backward=BACKWARD[compiled])) for k in (TRL_BEST, TRL_OLD, TUNELAB)]),
        "",
        f"MFU: model FLOPs per token × tokens/s ÷ the {PRECISION} matmul peak measured before each round, {results.median_range([p / 1e9 for p in peaks], 0)} GFLOP/s. "
        f"Model FLOPs per token (tunelab/train/flops.py: 4 per frozen weight, 6 per LoRA weight, the output projection at the positions the loss needs): "
        f"{flops[TUNELAB] / 1e9:.3f} GFLOP with the loss on answers, {flops[TRL_OLD] / 1e9:.3f} GFLOP with the loss on every token. "
        "Work a configuration does beyond that (recomputed activations, logits nobody needs, padding) earns no MFU.",
    ]
    if args.ablation:
        steps = [row(k, k, "") for k in ABLATION] + [row(TUNELAB, LAST_STEP, "")] + [row(k, k, "") for k in CANDIDATES]
        lines += [
            "",
            "Ablation: tunelab with its choices off (fp32, gradient checkpointing, padded batches, logits at every position), "
            "then switched on one at a time; each row adds one choice to the row above. The rows after the tunelab row are "
            "the candidates: the tunelab row with one choice as it was before it became the default, or one not yet a default.",
            "",
            results.table(header[:1] + header[2:], [r[:1] + r[2:] for r in steps]),
        ]
    elif args.candidates:
        lines += [
            "",
            "Candidates: the tunelab row with one choice changed: as it was before it became the default (what each buys), "
            "or one not yet a default (whether it would pay).",
            "",
            results.table(header, [row(k, k, "") for k in CANDIDATES]),
        ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = BENCH.parser(__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--ablation", action="store_true", help="also tunelab with its choices off, then on one at a time")
    parser.add_argument("--candidates", action="store_true", help="also the candidate rows alone (--ablation includes them)")
    args = BENCH.parse(parser, argv, worker)
    if args.ablation and args.candidates:
        parser.error("--ablation already measures the candidates: give one of --ablation and --candidates")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)
    import torch

    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model

    torch.set_num_threads(args.threads)
    train, _ = examples(args)
    tokens, answers = rendered_tokens(load_tokenizer(resolve_model(args.model).path), train)
    flops = {kind: lora_flops_per_token(args, answers / tokens) for kind in (TRL_BEST, TUNELAB, *ABLATION, *CANDIDATES)}
    flops[TRL_OLD] = lora_flops_per_token(args, 1.0)
    kinds = (
        [TRL_BEST, TRL_OLD, TUNELAB]
        + (list(ABLATION) if args.ablation else [])
        + (list(CANDIDATES) if args.ablation or args.candidates else [])
    )
    compiled = attention_backward_compiles(args)
    warm_s = warm_compile_cache(args, compiled, kinds)
    runs, peaks = measure(args, kinds)
    harness.write_section(args, section_title(args), section(args, runs, peaks, flops, compiled, warm_s), idle)


if __name__ == "__main__":
    main()
