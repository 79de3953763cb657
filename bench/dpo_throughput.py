"""DPO training throughput: tunelab against TRL's DPOTrainer at its defaults and without gradient checkpointing, on this CPU.

    python bench/dpo_throughput.py [--pairs 32] [--val 16] [--repeats 3] [--threads 2]
    python bench/dpo_throughput.py --smoke --model DIR --results FILE   # a few pairs, one round: checks the bench runs

Every configuration trains the same LoRA (r16, α32, every linear layer, no dropout; lr 5e-5
constant; β 0.1; one epoch, batches of 4 pairs) with DPO on the same pairs of
../shared/data/dpo_en_demo.json (those whose longer side fits in 512 tokens with the chat
template), each in its own process (so its peak memory is its own) with the same threads;
rounds are interleaved (every configuration once per round, the order alternating), round r
trains with seed r:

- TRL defaults: `DPOTrainer` + `peft_config` with DPOConfig's defaults (bf16 on, gradient checkpointing on;
  bf16 off on a CPU where bf16 matmuls do not pay, tunelab.cpu, where torch emulates them 100x slower);
- TRL without checkpointing: the same with gradient checkpointing off (bf16 stays on). Off is
  faster for SFT here, so it was expected to be TRL's best for DPO too; on 2026-12-04 the defaults
  were faster (1.08x) and used 40% less memory: DPO keeps the activations of both answers of every
  pair, and allocating them cost more than recomputing them. Ratios are against whichever TRL row
  is faster in the same run (named in the section). Precomputing the reference log-probabilities
  (`precompute_ref_log_probs`) saves nothing in one epoch: it runs the same reference forward
  passes, before training instead of during it;
- tunelab: `tunelab train` with `train.objective: dpo` (train_recipe) and the recipe's defaults
  (since that run: gradient checkpointing on for DPO, `train.gradient_checkpointing`).

tunelab's DPO *is* TRL's DPOTrainer, built with tunelab's model, arguments and callbacks
(tunelab/train/preference.py), so the expected result is parity with the faster TRL row; a gap
would be overhead tunelab adds (or removes).

Tokens/s: the pairs' tokens (prompt + chosen and prompt + rejected, no padding) over the
Trainer's own `train_runtime`. Held-out DPO loss: each trained adapter's mean DPO loss on the
same held-out pairs (reference: the same model with the adapter off; fp32), as a check that
speed is not bought with a worse model. Peak memory: the worker's peak RSS.
The section replaces its own in bench/RESULTS.md (bench/results.py, which also refuses to record
figures taken on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/dpo_throughput.py`
from bench import harness, results  # noqa: E402
from tunelab.cpu import peak_rss_mib  # noqa: E402

TITLE = "DPO training throughput (bench/dpo_throughput.py)"
BENCH = harness.Bench(__file__, smoke={"pairs": 8, "val": 4})
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0)
BATCH, LR, BETA, MAX_LEN = 4, 5e-5, 0.1, 512
TRL_DEFAULT, TRL_NO_CHECKPOINTING, TUNELAB = "TRL DPOTrainer, defaults", "TRL DPOTrainer, no gradient checkpointing", "tunelab"
# DPOConfig turns bf16 on by default; where bf16 matmuls do not pay both TRL rows train in fp32 (harness.BF16)
BF16, PRECISION = harness.BF16, harness.PRECISION
DESCRIBE = {
    TRL_DEFAULT: "DPOConfig defaults: bf16, gradient checkpointing"
    if BF16
    else "DPOConfig defaults but fp32 (no fast bf16 matmul here): gradient checkpointing",
    TRL_NO_CHECKPOINTING: f"{PRECISION}, no gradient checkpointing",
    TUNELAB: f"`tunelab train`, `objective: dpo`, recipe defaults ({PRECISION}, gradient checkpointing)",
}
SMOKE_PAIRS = [
    ("What is 2 + 2?", "2 + 2 is 4.", "It is 5."),
    ("Name a colour.", "Blue.", "A dog."),
    ("Capital of France?", "Paris.", "Berlin."),
    ("Say hello in French.", "Bonjour.", "Hola."),
    ("What do bees make?", "Honey.", "Milk."),
    ("How many legs has a spider?", "Eight.", "Six."),
]


# ---------------------------------------------------------------- the pairs
def load_pairs(args, tokenizer) -> tuple[list[dict], list[dict]]:
    """(training pairs, held-out pairs) in TRL's conversational form."""
    if args.smoke:
        pairs = [
            {
                "prompt": [{"role": "user", "content": f"{q} ({i})"}],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for i in range(2)
            for q, c, r in SMOKE_PAIRS
        ]
        return pairs[: args.pairs], pairs[args.pairs : args.pairs + args.val]
    from tunelab.data import load_examples
    from tunelab.paths import shared_data_dir

    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is needed for this benchmark (or use --smoke)")
    pairs = []
    for e in load_examples(str(data / "dpo_en_demo.json")):
        pair = {"prompt": e["messages"][:-1], "chosen": [e["messages"][-1]], "rejected": [e["rejected"]]}
        if max(sum(pair_tokens(tokenizer, pair, side)) for side in ("chosen", "rejected")) <= MAX_LEN:
            pairs.append(pair)
    if len(pairs) < args.pairs + args.val:
        sys.exit(f"only {len(pairs)} pairs fit in {MAX_LEN} tokens; ask for fewer (--pairs, --val)")
    return pairs[: args.pairs], pairs[args.pairs : args.pairs + args.val]


def pair_tokens(tokenizer, pair: dict, side: str) -> tuple[int, int]:
    from tunelab.evaluate.likelihood import answer_pair

    prompt_ids, answer_ids = answer_pair(tokenizer, pair["prompt"], pair[side][0]["content"])
    return len(prompt_ids), len(answer_ids)


def heldout_dpo_loss(model, tokenizer, pairs: list[dict]) -> float:
    """Mean DPO loss on `pairs`: the policy is the model, the reference the same model with its adapter off."""
    import math

    from tunelab.evaluate.likelihood import answer_pair
    from tunelab.models.likelihood import continuation_logprobs

    token_pairs = [answer_pair(tokenizer, p["prompt"], p[side][0]["content"]) for p in pairs for side in ("chosen", "rejected")]
    model.eval()
    policy = continuation_logprobs(model, tokenizer, token_pairs)
    with model.disable_adapter():
        reference = continuation_logprobs(model, tokenizer, token_pairs)
    losses = []
    for k in range(len(pairs)):
        (pc, _), (pr, _), (rc, _), (rr, _) = policy[2 * k], policy[2 * k + 1], reference[2 * k], reference[2 * k + 1]
        margin = BETA * ((pc - rc) - (pr - rr))
        losses.append(math.log1p(math.exp(-margin)))  # −log σ(margin)
    return statistics.fmean(losses)


# ---------------------------------------------------------------- the workers (one configuration, one process)
def trl_worker(kind: str, args, model_path: Path, workdir: Path, train: list[dict]):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from tunelab.models.load import load_causal_lm, load_tokenizer

    no_checkpointing = {"activation_checkpointing": False} if kind == TRL_NO_CHECKPOINTING else {}
    cfg = DPOConfig(
        **harness.trl_arguments(workdir, batch=BATCH, learning_rate=LR, max_length=MAX_LEN, seed=args.seed),
        beta=BETA,
        bf16=BF16,
        **no_checkpointing,
    )
    trainer = DPOTrainer(
        model=load_causal_lm(model_path),
        args=cfg,
        train_dataset=Dataset.from_list(train),
        processing_class=load_tokenizer(model_path),
        peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **LORA),
    )
    result = trainer.train()
    return trainer.model, result.metrics["train_runtime"]


def tunelab_worker(args, model_path: Path, workdir: Path, train: list[dict]):
    from tunelab.config import recipe_from_dict
    from tunelab.io import atomic_write_jsonl
    from tunelab.models.hf_chat import load_hf_model
    from tunelab.runs import DEFAULT_RUNS_DIR
    from tunelab.train.run import train_recipe

    data_file = workdir / "pairs.jsonl"
    atomic_write_jsonl(data_file, train)
    data = {"sources": [{"path": str(data_file)}], "dedup": "none", "clean": False, "test_fraction": 0, "validation_fraction": 0}
    lora = {"r": LORA["r"], "alpha": LORA["lora_alpha"], "dropout": 0.0, "target_modules": "all_linear"}
    train_cfg = {"objective": "dpo", "epochs": 1, "batch_size": BATCH, "learning_rate": LR, "lr_scheduler": "constant", "warmup_ratio": 0}
    train_cfg.update(max_seq_length=MAX_LEN, threads=args.threads, save_steps=100000, tensorboard=False, seed=args.seed, lora=lora)
    recipe = recipe_from_dict(
        {"name": "bench", "output_dir": str(workdir / DEFAULT_RUNS_DIR), "model": str(model_path), "data": data, "train": train_cfg}
    )
    run = train_recipe(recipe)
    model, _, _ = load_hf_model(run)
    return model, json.loads((run / "train" / "summary.json").read_text())["train_seconds"]


def worker(kind: str, args) -> dict:
    import torch

    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model

    torch.set_num_threads(args.threads)
    model_path = resolve_model(args.model).path
    tokenizer = load_tokenizer(model_path)
    train, val = load_pairs(args, tokenizer)
    workdir = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    model, seconds = (
        tunelab_worker(args, model_path, workdir, train) if kind == TUNELAB else trl_worker(kind, args, model_path, workdir, train)
    )
    tokens = sum(sum(pair_tokens(tokenizer, p, side)) for p in train for side in ("chosen", "rejected"))
    return {
        "kind": kind,
        "seed": args.seed,
        "pairs": len(train),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "heldout_dpo_loss": heldout_dpo_loss(model, tokenizer, val),
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------- rounds and the section
def measure(args) -> dict[str, list[dict]]:
    """Every configuration once per round, each in a worker process."""
    return harness.rounds(
        [TRL_DEFAULT, TRL_NO_CHECKPOINTING, TUNELAB],
        args.repeats,
        lambda kind, r: BENCH.in_worker(args, kind, r, worker),
        say=lambda result: f"{result['tokens_per_second']:.1f} tok/s, held-out DPO loss {result['heldout_dpo_loss']:.4f}",
    )


def section(args, runs: dict[str, list[dict]]) -> str:
    fastest = max((TRL_DEFAULT, TRL_NO_CHECKPOINTING), key=lambda k: statistics.median(r["tokens_per_second"] for r in runs[k]))
    best = [r["tokens_per_second"] for r in runs[fastest]]
    first = runs[TUNELAB][0]
    header = ["configuration", "settings", "tokens/s", "vs fastest TRL", "held-out DPO loss (mean)", "peak RSS (MiB)"]
    rows = []
    for kind, done in runs.items():
        ratios = [r["tokens_per_second"] / b for r, b in zip(done, best)]
        rows.append(
            [
                kind,
                DESCRIBE[kind],
                results.median_range([r["tokens_per_second"] for r in done]),
                results.median_range(ratios, 2, "x"),
                f"{statistics.fmean(r['heldout_dpo_loss'] for r in done):.4f}",
                f"{statistics.median(r['peak_rss_mib'] for r in done):,.0f}",
            ]
        )
    intro = (
        f"Model `{args.model}`, {args.threads} threads, {first['pairs']} pairs ({first['tokens']:,} tokens) per epoch, "
        f"{args.repeats} interleaved round(s), round r with seed r; figures are median (min–max) over the rounds. "
        f"Ratios are against the faster TRL configuration in this run: {fastest}."
    )
    return intro + "\n\n" + results.table(header, rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = BENCH.parser(__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=32, help="training pairs (one epoch)")
    parser.add_argument("--val", type=int, default=16, help="held-out pairs for the DPO loss check")
    return BENCH.parse(parser, argv, worker)


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)
    harness.write_section(args, TITLE, section(args, measure(args)), idle)


if __name__ == "__main__":
    main()
