"""Deterministic train/validation/test splits, and the check that test data never reaches training."""

from __future__ import annotations

import random

from tunelab.data.schema import content_hash
from tunelab.errors import TunelabError


def split_count(n: int, size: int | None, fraction: float) -> int:
    """An exact `size`, else round(n × fraction), at least 1 when the fraction is positive and n > 1."""
    if size is not None:
        return min(size, n)
    if fraction <= 0 or n < 2:
        return 0
    return max(1, round(n * fraction))


def split_examples(
    examples: list[dict],
    *,
    seed: int,
    test_size: int | None = None,
    test_fraction: float = 0.0,
    validation_size: int | None = None,
    validation_fraction: float = 0.0,
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test): a seeded shuffle, then test and validation taken off the front.

    The same examples in the same order and the same seed always give the same split;
    each split keeps the input order.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = split_count(len(examples), test_size, test_fraction)
    n_val = split_count(len(examples), validation_size, validation_fraction)
    if n_test + n_val >= len(examples):
        raise TunelabError(f"the split leaves no training data: {len(examples)} examples, {n_test} for test and {n_val} for validation")
    test_ids = set(order[:n_test])
    val_ids = set(order[n_test : n_test + n_val])
    train = [e for i, e in enumerate(examples) if i not in test_ids and i not in val_ids]
    validation = [e for i, e in enumerate(examples) if i in val_ids]
    test = [e for i, e in enumerate(examples) if i in test_ids]
    return train, validation, test


def seeded_sample(examples: list[dict], k: int, seed: int) -> list[dict]:
    """k examples chosen with a seeded RNG, kept in their original order."""
    if k >= len(examples):
        return list(examples)
    chosen = set(random.Random(seed).sample(range(len(examples)), k))
    return [e for i, e in enumerate(examples) if i in chosen]


def overlapping(train: list[dict], test: list[dict]) -> list[dict]:
    """Training examples whose normalised messages equal a test example's."""
    held_out = {content_hash(e) for e in test}
    return [e for e in train if content_hash(e) in held_out]


def check_no_overlap(train: list[dict], test: list[dict]) -> None:
    """Raise when any held-out example also occurs in the training data."""
    found = overlapping(train, test)
    if found:
        ids = ", ".join(e["id"] for e in found[:5])
        raise TunelabError(
            f"{len(found)} held-out test examples also occur in the training data (e.g. {ids}); "
            "remove them from training or use another eval set"
        )
