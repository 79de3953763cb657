"""Data-stage speed: batched token measurement vs one apply_chat_template call per example,
MinHash.bulk signatures vs one MinHash object per example, and the whole `prepare_data` on the largest shared file (gsm8k, 7,473 examples).

    python bench/data_prepare.py [--repeats 3] [--threads 2] [--examples N]

Both ways are measured in the same rounds, interleaved (each way once per round), on the same
examples, and must give the same lengths and signatures (asserted). Ratios are per round
(baseline / candidate of the same round). The section replaces its own in bench/RESULTS.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/data_prepare.py`
from bench import harness, results  # noqa: E402

TITLE = "Data stage (bench/data_prepare.py)"
BENCH = harness.Bench(__file__)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def minhash_one_by_one(examples: list[dict]) -> list:
    from datasketch import MinHash

    from tunelab.data.dedup import NUM_PERM, shingles

    out = []
    for e in examples:
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch(list(shingles(e)))
        out.append(m)
    return out


def main(argv=None) -> None:
    parser = BENCH.parser(__doc__)
    parser.add_argument("--examples", type=int, default=None, help="only the first N examples of gsm8k (default: all)")
    args = BENCH.parse(parser, argv)
    idle = harness.check_idle(args)

    import torch

    from tunelab.config import DataConfig, DataSource
    from tunelab.data import load_source
    from tunelab.data.dedup import signatures
    from tunelab.data.prepare import prepare_data, token_lengths
    from tunelab.io import atomic_write_jsonl
    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model
    from tunelab.paths import shared_data_dir

    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is not present")
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct").path)
    source = DataSource(path=str(data / "gsm8k_train_alpaca.json"))
    examples = load_source(source)[: args.examples]
    n = len(examples)
    if args.examples is not None:  # prepare_data reads a file: these examples, as conversations
        source = DataSource(path=str(Path(tempfile.mkdtemp()) / "gsm8k.jsonl"), format="messages")
        atomic_write_jsonl(Path(source.path), [{"messages": e["messages"]} for e in examples])

    times: dict[str, list[float]] = {k: [] for k in ("template", "batched", "minhash", "bulk", "prepare")}
    for r in range(args.repeats):
        baseline, t = timed(lambda: [len(tokenizer.apply_chat_template(e["messages"], tokenize=True)["input_ids"]) for e in examples])
        times["template"].append(t)
        batched, t = timed(lambda: token_lengths(tokenizer, examples))
        times["batched"].append(t)
        assert batched == baseline, "batched lengths differ from apply_chat_template(tokenize=True)"
        one_by_one, t = timed(lambda: minhash_one_by_one(examples))
        times["minhash"].append(t)
        bulk, t = timed(lambda: signatures(examples))
        times["bulk"].append(t)
        assert all((a.hashvalues == b.hashvalues).all() for a, b in zip(one_by_one, bulk)), "bulk signatures differ"
        with tempfile.TemporaryDirectory() as tmp:
            card, t = timed(lambda: prepare_data(DataConfig(sources=[source]), Path(tmp) / "out", "smollm2-135m-instruct", 2048))
        times["prepare"].append(t)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    def ratio(base: str, cand: str) -> str:
        return results.median_range([b / c for b, c in zip(times[base], times[cand])], 2, "x")

    def seconds(key: str) -> str:
        return results.median_range(times[key], 2, " s")

    rows = [
        [
            "token lengths with the chat template",
            f"per-example `apply_chat_template(tokenize=True)`: {seconds('template')}",
            f"render all, one batched tokenizer call per 512: {seconds('batched')}",
            ratio("template", "batched"),
        ],
        [
            "MinHash signatures (word 3-grams, 128 perms)",
            f"one `MinHash` object per example: {seconds('minhash')}",
            f"`MinHash.bulk` per 512: {seconds('bulk')}",
            ratio("minhash", "bulk"),
        ],
        [
            "whole `prepare_data` (load, clean, tokens, near-dedup, split, card)",
            "",
            f"{seconds('prepare')}, {results.median_range([n / t for t in times['prepare']], 0)} examples/s",
            "",
        ],
    ]
    body = (
        f"{n:,} examples of gsm8k_train_alpaca.json, SmolLM2 tokenizer, tokenizers single-threaded, "
        f"{args.repeats} interleaved round(s); median (min–max) over the rounds, ratios per round. Last counts: {card['counts']}.\n\n"
        + results.table(["what", "baseline", "candidate", "ratio"], rows)
    )
    harness.write_section(args, TITLE, body, idle)


if __name__ == "__main__":
    main()
