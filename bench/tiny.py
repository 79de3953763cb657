"""A tiny random Llama with SmolLM2's real tokenizer, and a tiny sweep over it: what the tests train,
evaluate and sweep, and what bench/sweep_resume.py times. It lives with the benches, not in tests/,
so that a bench imports no test module; tests/conftest.py and the sweep tests import it from here.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def tiny_sizes(tokenizer, *, layers: int = 2, hidden: int = 64) -> dict:
    """Config fields of a tiny decoder (any architecture's config class takes them) for `tokenizer`."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_tiny_model(out: Path, tokenizer_dir: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A random Llama with real shapes' structure but tiny size, saved with a real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    config = LlamaConfig(**tiny_sizes(tokenizer, layers=layers, hidden=hidden))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_facts(folder: Path) -> Path:
    """30 Alpaca examples of made-up facts (one per country number) in `folder`/facts.json."""
    rows = [
        {"instruction": f"What is the capital of country number {i}?", "input": "", "output": f"The capital of country {i} is City{i}."}
        for i in range(30)
    ]
    path = folder / "facts.json"
    path.write_text(json.dumps(rows))
    return path


def write_questions(folder: Path) -> Path:
    """A small multiple-choice file in `folder`/questions.jsonl: the general-ability check every row of the sweep gets."""
    rows = [{"query": f"Question: What is {i} plus one?", "choices": [str(i), str(i + 1), "blue"], "gold": 1} for i in range(12)]
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sweep(folder: Path, model_dir: Path, **extra) -> Path:
    """A sweep of `model_dir` on the facts: the reference and 4 variants, 2 steps each, scored by BLEU and ROUGE-L,
    with the general-ability check on 8 questions of a small file; `extra`: more fields of the sweep spec."""
    data = write_facts(folder)
    questions = write_questions(folder)
    recipe = {
        "model": str(model_dir),
        "data": {"sources": [{"path": str(data)}], "dedup": "exact", "validation_fraction": 0.1},
        "train": {
            "max_steps": 2,
            "batch_size": 2,
            "max_seq_length": 64,
            "save_steps": 1,
            "save_total_limit": 3,
            "logging_steps": 1,
            "tensorboard": False,
            "threads": 1,
            "learning_rate": 1e-3,
        },
        "eval": {
            "max_new_tokens": 6,
            "batch_size": 8,
            "metrics": ["bleu", "rougeL"],
            "task": "none",
            "general_ability": {"benchmark": str(questions), "max_questions": 8},
        },
    }
    (folder / "base.yaml").write_text(yaml.safe_dump(recipe))
    spec = {
        "name": "tiny",
        "base": "base.yaml",
        "output_dir": str(folder / "sweeps"),
        "heldout": {"from_source": 0, "size": 6},
        "variants": [
            {"name": "baseline"},
            {"name": "rank-4", "set": {"rank": 4}},
            {"name": "no-clean", "set": {"clean": False}},
            {"name": "interp-half", "set": {"interpolation": 0.5}},  # the baseline's training, moved halfway back to the base
        ],
        **extra,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
