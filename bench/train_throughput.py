"""Training throughput: tunelab's trainer against a plain TRL SFTTrainer + PEFT LoRA run.

Both train the default model (SmolLM2-135M-Instruct) with the same LoRA settings for one
epoch over the same examples of ../shared/data/alpaca_en_demo.json, each in its own process
(so peak memory is measured separately), with the same thread count:
- baseline: TRL SFTTrainer defaults: fp32, batches padded to their longest example;
- tunelab: bf16 autocast where the CPU has it, padding-free packing, logits only at answer tokens.
Throughput counts the real (non-padding) tokens of the examples per second of training.
Afterwards both adapters are scored on the same held-out examples (answer-token loss), so
the speed-up is not bought with a worse model. Prints the ratio; target >= 2.5x.

    .venv/bin/python bench/train_throughput.py [--examples 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
BATCH, LR, MAX_LEN = 8, 2e-4, 512


def examples(n_train: int, n_val: int) -> tuple[list[dict], list[dict]]:
    from tunelab.data import load_examples
    from tunelab.paths import shared_data_dir

    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is needed for this benchmark")
    rows = load_examples(str(data / "alpaca_en_demo.json"))
    return rows[:n_train], rows[n_train : n_train + n_val]


def answer_loss(model, tokenizer, rows: list[dict]) -> float:
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


def worker(kind: str, n_train: int, n_val: int, threads: int, out: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    from tunelab.data.render import render_example
    from tunelab.models import resolve_model
    from tunelab.models.load import load_tokenizer

    train_rows, val_rows = examples(n_train, n_val)
    path = resolve_model("smollm2-135m-instruct").path
    tokenizer = load_tokenizer(path)
    tokens = sum(len(render_example(tokenizer, r["messages"], MAX_LEN)["input_ids"]) for r in train_rows)
    tmp = Path(tempfile.mkdtemp())
    if kind == "baseline":
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(str(path))
        ds = Dataset.from_list([{"messages": r["messages"]} for r in train_rows])
        cfg = SFTConfig(
            output_dir=str(tmp),
            per_device_train_batch_size=BATCH,
            num_train_epochs=1,
            learning_rate=LR,
            max_length=MAX_LEN,
            bf16=False,
            fp16=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            disable_tqdm=True,
            seed=0,
            lr_scheduler_type="constant",
        )
        trainer = SFTTrainer(
            model=model, args=cfg, train_dataset=ds, processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA)
        )
        t0 = time.time()
        trainer.train()
        seconds = time.time() - t0
        model = trainer.model
    else:
        from tunelab.config import recipe_from_dict
        from tunelab.io import atomic_write_jsonl
        from tunelab.train.run import train_recipe

        data_file = tmp / "train.jsonl"
        atomic_write_jsonl(data_file, train_rows)
        recipe = recipe_from_dict(
            {
                "name": "bench",
                "output_dir": str(tmp / "runs"),
                "model": str(path),
                "data": {
                    "sources": [{"path": str(data_file), "format": "messages"}],
                    "dedup": "none",
                    "test_fraction": 0,
                    "validation_fraction": 0,
                    "clean": False,
                    "max_tokens": 100000,
                },
                "train": {
                    "epochs": 1,
                    "batch_size": BATCH,
                    "learning_rate": LR,
                    "max_seq_length": MAX_LEN,
                    "threads": threads,
                    "lr_scheduler": "constant",
                    "warmup_ratio": 0,
                    "save_steps": 100000,
                    "tensorboard": False,
                    "seed": 0,
                    "lora": {"r": LORA["r"], "alpha": LORA["lora_alpha"], "dropout": 0.0, "target_modules": "all_linear"},
                },
            }
        )
        run = train_recipe(recipe)
        summary = json.loads((run / "train" / "summary.json").read_text())
        seconds = summary["train_seconds"]
        from tunelab.models.chat import load_hf_model

        model, _, _ = load_hf_model(run)
    val = answer_loss(model, tokenizer, val_rows)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(
        json.dumps(
            {
                "kind": kind,
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_second": tokens / seconds,
                "val_loss": val,
                "peak_rss_mib": peak_mib,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["baseline", "tunelab"])
    parser.add_argument("--out", type=Path)
    a = parser.parse_args()
    if a.worker:
        worker(a.worker, a.examples, a.val, a.threads, a.out)
        return
    results = {}
    for kind in ["baseline", "tunelab"]:
        out = Path(tempfile.mkdtemp()) / f"{kind}.json"
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--examples",
                str(a.examples),
                "--val",
                str(a.val),
                "--threads",
                str(a.threads),
                "--out",
                str(out),
            ],
            check=True,
        )
        results[kind] = json.loads(out.read_text())
        r = results[kind]
        print(
            f"{kind:9s} {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens_per_second']:.1f} tok/s, "
            f"validation loss {r['val_loss']:.4f}, peak RSS {r['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    b, t = results["baseline"], results["tunelab"]
    print(
        f"RATIO tokens/s tunelab/baseline = {t['tokens_per_second'] / b['tokens_per_second']:.2f}x (target >= 2.5x); "
        f"validation loss {t['val_loss']:.4f} vs {b['val_loss']:.4f} ({'no worse' if t['val_loss'] <= b['val_loss'] + 0.01 else 'WORSE'}); "
        f"peak memory ratio {t['peak_rss_mib'] / b['peak_rss_mib']:.2f}x"
    )


if __name__ == "__main__":
    main()
