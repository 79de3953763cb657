"""Data-stage speed: batched token measurement vs one apply_chat_template call per example,
MinHash.bulk signatures vs one MinHash object per example, and the whole `prepare_data` on the largest shared file (gsm8k, 7,473 examples).

Both ways are measured in the same run, on the same examples, and must give the same lengths.
Run: `.venv/bin/python bench/data_prepare.py` (HF_HUB_OFFLINE=1). Other processes may be
running on this machine: compare only the ratio.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from tunelab.config import DataConfig, DataSource  # noqa: E402
from tunelab.data import load_source  # noqa: E402
from tunelab.data.dedup import NUM_PERM, shingles, signatures  # noqa: E402
from tunelab.data.prepare import prepare_data, token_lengths  # noqa: E402
from tunelab.models.load import load_tokenizer  # noqa: E402
from tunelab.models.resolve import resolve_model  # noqa: E402
from tunelab.paths import shared_data_dir  # noqa: E402

torch.set_num_threads(2)


def main() -> None:
    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is not present")
    path = data / "gsm8k_train_alpaca.json"
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct").path)
    examples = load_source(DataSource(path=str(path)))

    start = time.perf_counter()
    baseline = [len(tokenizer.apply_chat_template(e["messages"], tokenize=True)["input_ids"]) for e in examples]
    t_base = time.perf_counter() - start
    start = time.perf_counter()
    batched = token_lengths(tokenizer, examples)
    t_batched = time.perf_counter() - start
    assert batched == baseline, "batched lengths differ from apply_chat_template(tokenize=True)"

    from datasketch import MinHash

    start = time.perf_counter()
    one_by_one = []
    for e in examples:
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch(list(shingles(e)))
        one_by_one.append(m)
    t_sig_base = time.perf_counter() - start
    start = time.perf_counter()
    bulk = signatures(examples)
    t_sig_bulk = time.perf_counter() - start
    assert all((a.hashvalues == b.hashvalues).all() for a, b in zip(one_by_one, bulk)), "bulk signatures differ"

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        card = prepare_data(DataConfig(sources=[DataSource(path=str(path))]), Path(tmp) / "out", "smollm2-135m-instruct", 2048)
        t_prepare = time.perf_counter() - start
    n = len(examples)
    print(
        f"token lengths, {n} examples: per-example apply_chat_template {t_base:.2f} s ({n / t_base:.0f}/s), "
        f"batched render+tokenize {t_batched:.2f} s ({n / t_batched:.0f}/s): ratio {t_base / t_batched:.2f}x"
    )
    print(
        f"MinHash signatures, {n} examples: one MinHash object each {t_sig_base:.2f} s, MinHash.bulk {t_sig_bulk:.2f} s: ratio {t_sig_base / t_sig_bulk:.2f}x"
    )
    print(
        f"prepare_data gsm8k (load, clean, tokens, near-dedup, split, card): {t_prepare:.1f} s, {n / t_prepare:.0f} examples/s; counts {card['counts']}"
    )


if __name__ == "__main__":
    main()
