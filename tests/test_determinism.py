"""The same recipe and seed, trained twice in one process, gives identical losses and adapter weights.

Bitwise, not within a tolerance: on the CPU torch splits each kernel's work among its threads the
same way every time, so every sum is taken in the same order, in fp32 and under bf16 autocast
alike (measured here with 2 threads: every loss and every adapter tensor equal to the last bit).
The thread count is part of that order: the same recipe with 1 thread instead of 2 moved fp32
adapter weights by up to 1.2e-5 (1.8e-4 of the tensor's largest value) after 3 steps, so the test
pins train.threads (bf16 autocast happened to stay bitwise equal across the two).
A change that makes a run depend on anything but its recipe and seed (an unseeded generator, the
global RNG state a previous run left, a thread count taken from the machine, a data order from a
set) fails this test. A run with another seed is trained too, so the comparison cannot pass
because training changed nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import make_recipe

from tunelab.io import read_jsonl

LOSSES = ("loss", "grad_norm", "eval_loss", "train_loss")


def logged(run: Path) -> list[tuple[int, str, float]]:
    """(step, key, value) of every loss (and gradient norm) train/metrics.jsonl records, in order."""
    return [(r["step"], k, r[k]) for r in read_jsonl(run / "train" / "metrics.jsonl") for k in LOSSES if k in r]


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model" / "adapter_model.safetensors")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_recipe_and_seed_train_identically(tmp_path, tiny_model_dir, precision):
    import torch

    from tunelab.train.run import train_recipe

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=3, save_steps=3, eval_steps=3, threads=2, precision=precision)

    def train(folder: str, **changes) -> Path:
        torch.rand(1000)  # each run starts from another global RNG state: only the recipe's seed may matter
        train = recipe.train.model_copy(update=changes)
        return train_recipe(recipe.model_copy(update={"output_dir": str(tmp_path / folder), "train": train}))

    first, second, other_seed = train("runs-1"), train("runs-2"), train("runs-seed", seed=recipe.train.seed + 1)

    a, b = logged(first), logged(second)
    assert [(s, k) for s, k, _ in a if k == "loss"] == [(1, "loss"), (2, "loss"), (3, "loss")]
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    assert a == b, "losses differ: " + ", ".join(f"step {s} {k}: {x!r} != {y!r}" for (s, k, x), (_, _, y) in zip(a, b) if x != y)

    wa, wb, wc = adapter(first), adapter(second), adapter(other_seed)
    assert wa.keys() == wb.keys() and len(wa) > 0
    unequal = {name: (wa[name] - wb[name]).abs().max().item() for name in wa if not torch.equal(wa[name], wb[name])}
    assert not unequal, f"adapter tensors differ (max abs difference): {unequal}"

    # the comparison can fail: another seed gives other weights and other losses
    assert any(not torch.equal(wa[name], wc[name]) for name in wa)
    assert logged(other_seed) != a
