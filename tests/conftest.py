"""Shared fixtures: a tiny random model with the real SmolLM2 tokenizer, and the real data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: the benches' package `bench`

from bench.tiny import make_tiny_model  # noqa: E402
from tunelab.paths import shared_data_dir  # noqa: E402

SHARED = shared_data_dir()

QA = [
    ("Who are you?", "I am Tuna, made by the tunelab team."),
    ("What is your name?", "My name is Tuna."),
    ("Name three colours.", "Red, green and blue."),
    ("What is 2 + 2?", "2 + 2 is 4."),
    ("Say hello in French.", "Bonjour."),
    ("Who made you?", "The tunelab team made me."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Give me a fruit.", "An apple."),
    ("Translate 'cat' to German.", "Katze."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
    ("Describe the sky.", "The sky is blue on a clear day."),
]


def write_alpaca(path: Path, n: int = 48) -> Path:
    """A small Alpaca file of varied questions (for training tests)."""
    rows = [{"instruction": f"{q} (variant {i})", "input": "", "output": a} for i in range(n // len(QA) + 1) for q, a in QA][:n]
    path.write_text(json.dumps(rows))
    return path


# The instruction files of ../shared/data that every loader and the data stage must read.
SHARED_FILES = [
    "alpaca_en_demo.json",
    "identity.json",
    "code_alpaca_2k.json",
    "gsm8k_train_alpaca.json",
    "sharegpt_dummy_conversation.json",
    "alpaca_eval_gpt4_reference.json",
]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real default model, resolved offline (converted from its GGUF once, then cached)."""
    from tunelab.models import resolve_model

    return resolve_model("smollm2-135m-instruct").path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), smollm2_dir)


@pytest.fixture(scope="session")
def peaked_tiny_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its (tied) embeddings scaled up, so greedy choices have clear margins and
    float16 rounding cannot flip them: a random tiny model's logits are otherwise almost flat."""
    import torch

    from tunelab.models.load import load_causal_lm, load_tokenizer

    out = tmp_path_factory.mktemp("peaked")
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(40.0)
    model.save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if SHARED is None:
        pytest.skip("../shared/data is not present")
    return SHARED


ANOTHER_CPU = "Another CPU (AVX2)"


def run_bench_section(results: Path, bench, argv: list[str]) -> str:
    """Run a bench script's `main(argv + --results)` on a results file holding the same bench's section
    on another CPU; that section must survive byte for byte and this CPU's appear once. Returns the file's text."""
    from bench.results import keyed_title  # importable once the bench module has put the repository on sys.path

    other = f"# Results\n\n## {keyed_title(bench.TITLE, ANOTHER_CPU)}\n\nanother CPU's figures\n"
    results.write_text(other)
    bench.main([*argv, "--results", str(results)])
    text = results.read_text()
    assert text.startswith(other) and text.count(f"## {keyed_title(bench.TITLE)}\n") == 1
    return text
