"""The data stage: sources → validated, cleaned, deduplicated, split, mixed, augmented splits + card.

Order of work (each step's drops are counted by reason in the card):
1. read every source (invalid records: raise when `strict`, else drop);
2. clean text, re-validate, quality and length filters (tokens of the chat-templated example);
3. exact or near deduplication across all sources (the first copy is kept);
4. per-source `max_examples` (seeded sample);
5. split: test from `eval_source` when set, else cut from the pool; validation from the pool;
   training (and validation) examples equal to a test example are dropped ("overlaps_test");
6. mixing of the training split by source `weight` (see `mix_by_weight`), then total `max_examples`;
7. augmentation of the training split only;
8. write {train,validation,test}.jsonl, card.json, card.md, lengths.png into a temporary
   folder that is renamed to `out_dir` at the end.
"""
from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from pathlib import Path

from tunelab.config import DataConfig
from tunelab.data.augment import paraphrase, template_variation
from tunelab.data.card import shared_bins, token_stats, write_card
from tunelab.data.clean import clean_example, quality_problem
from tunelab.data.dedup import exact_dedup, near_dedup
from tunelab.data.loaders import read_source
from tunelab.data.schema import InvalidRecord, split_hash, validate_example, where
from tunelab.data.split import check_no_overlap, overlapping, seeded_sample, split_examples
from tunelab.errors import DataError
from tunelab.io import atomic_dir, atomic_write_jsonl
from tunelab.progress import console, progress_bar

SPLITS = ("train", "validation", "test")


class Drops:
    """Dropped examples by reason: a count, a few ids and the first message."""

    def __init__(self):
        self.by_reason: dict[str, dict] = {}

    def add(self, reason: str, ref: str, message: str | None = None, count: int = 1) -> None:
        d = self.by_reason.setdefault(reason, {"count": 0, "examples": [], "first_message": message})
        d["count"] += count
        if len(d["examples"]) < 5:
            d["examples"].append(ref)

    def add_invalid(self, err: InvalidRecord) -> None:
        self.add(err.reason, f"{err.file}:{err.record}", str(err))

    def total(self) -> int:
        return sum(d["count"] for d in self.by_reason.values())


def token_lengths(tokenizer, examples: list[dict], batch: int = 512) -> list[int]:
    """Tokens of each example rendered with the model's chat template."""
    lengths: list[int] = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("Measuring tokens", total=len(examples), info="")
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            texts = [tokenizer.apply_chat_template(e["messages"], tokenize=False) for e in chunk]
            lengths += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            bar.update(task, advance=len(chunk))
    return lengths


def filter_examples(examples: list[dict], cfg: DataConfig, tokenizer, max_tokens: int, drops: Drops) -> tuple[list[dict], dict[str, int]]:
    """Clean, re-validate, quality and length filters. Returns (kept, {id: tokens})."""
    kept = []
    for e in examples:
        if cfg.clean:
            e = clean_example(e)
            try:
                validate_example(e)  # cleaning may have emptied a turn
            except InvalidRecord as err:
                if cfg.strict:
                    raise
                drops.add_invalid(err)
                continue
        problem = quality_problem(e, cfg.min_answer_chars, cfg.quality_filter)
        if problem:
            drops.add(problem, e["id"])
            continue
        kept.append(e)
    lengths = dict(zip((e["id"] for e in kept), token_lengths(tokenizer, kept)))
    result = []
    for e in kept:
        n = lengths[e["id"]]
        if n > max_tokens:
            file, record = where(e)
            err = InvalidRecord(file, record, None, f"{n} tokens with the chat template, over the limit of {max_tokens}", "too_long")
            if cfg.strict:
                raise err
            drops.add_invalid(err)
        elif n < cfg.min_tokens:
            drops.add("too_short", e["id"])
        else:
            result.append(e)
    return result, lengths


def unique_ids(examples: list[dict], seen: set[str]) -> None:
    """Make ids unique across sources (two files named train.jsonl) by suffixing repeats."""
    for e in examples:
        base, k = e["id"], 2
        while e["id"] in seen:
            e["id"], k = f"{base}~{k}", k + 1
        seen.add(e["id"])


def mix_by_weight(train_by_source: list[list[dict]], weights: list[float], seed: int) -> list[dict]:
    """Each source contributes round(weight × its size) training examples.

    The whole part of a weight repeats every example (weight 2 = each twice, ids `<id>~rep2`),
    the fractional part is a seeded sample without repetition (weight 0.5 = a random half).
    Weights of 1 keep every example exactly once.
    """
    mixed = []
    for i, (examples, w) in enumerate(zip(train_by_source, weights)):
        whole = math.floor(w)
        for rep in range(whole):
            mixed += examples if rep == 0 else [{**e, "id": f"{e['id']}~rep{rep + 1}"} for e in examples]
        extra = round((w - whole) * len(examples))
        if extra:
            sample = seeded_sample(examples, extra, seed + 1000 + i)
            mixed += sample if whole == 0 else [{**e, "id": f"{e['id']}~rep{whole + 1}"} for e in sample]
    return mixed


def prepare_data(data_cfg: DataConfig, out_dir: Path, model_ref: str, max_seq_length: int) -> dict:
    """Build the data splits and card in `out_dir` (atomically); return the card."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model

    cfg = data_cfg
    out_dir = Path(out_dir)
    max_tokens = cfg.max_tokens or max_seq_length
    resolved = resolve_model(model_ref)
    tokenizer = load_tokenizer(resolved.path)
    drops = Drops()
    seen_ids: set[str] = set()
    lengths: dict[str, int] = {}

    def load(source, is_eval: bool = False):
        examples, invalid, info = read_source(source, strict=cfg.strict)
        for err in invalid:
            drops.add_invalid(err)
        unique_ids(examples, seen_ids)
        examples, source_lengths = filter_examples(examples, cfg, tokenizer, max_tokens, drops)
        lengths.update(source_lengths)
        info.update(eval=is_eval, valid=len(examples))
        return examples, info

    # 1–2: read, clean, filter
    pool: list[dict] = []
    source_of: dict[str, int] = {}
    infos = []
    for i, source in enumerate(cfg.sources):
        examples, info = load(source)
        infos.append(info)
        pool += examples
        source_of.update((e["id"], i) for e in examples)
    eval_examples = None
    if cfg.eval_source is not None:
        eval_examples, info = load(cfg.eval_source, is_eval=True)
        infos.append(info)

    # 3: deduplicate
    def dedup(examples: list[dict], mode: str) -> list[dict]:
        if mode == "none":
            return examples
        examples, dropped = exact_dedup(examples)
        for e, kept_id in dropped:
            drops.add("exact_duplicate", e["id"], f"{e['id']} repeats {kept_id}")
        if mode == "near":
            examples, dropped = near_dedup(examples, cfg.near_dup_threshold)
            for e, kept_id in dropped:
                drops.add("near_duplicate", e["id"], f"{e['id']} is a near copy of {kept_id}")
        return examples

    pool = dedup(pool, cfg.dedup)
    if eval_examples is not None:
        eval_examples = dedup(eval_examples, "exact" if cfg.dedup != "none" else "none")

    # 4: per-source caps
    for i, source in enumerate(cfg.sources):
        mine = [e for e in pool if source_of[e["id"]] == i]
        if source.max_examples and len(mine) > source.max_examples:
            keep = {e["id"] for e in seeded_sample(mine, source.max_examples, cfg.seed + i)}
            drops.add("source_max_examples", source.path, count=len(mine) - len(keep))
            pool = [e for e in pool if source_of[e["id"]] != i or e["id"] in keep]

    # 5: split, and keep test data out of training
    if eval_examples is None:
        train, validation, test = split_examples(pool, seed=cfg.seed, test_size=cfg.test_size, test_fraction=cfg.test_fraction,
                                                 validation_size=cfg.validation_size, validation_fraction=cfg.validation_fraction)
    else:
        train, validation, _ = split_examples(pool, seed=cfg.seed, validation_size=cfg.validation_size, validation_fraction=cfg.validation_fraction)
        test = seeded_sample(eval_examples, cfg.test_size, cfg.seed) if cfg.test_size is not None else eval_examples
    for name in ("train", "validation"):
        split = train if name == "train" else validation
        leaked = {e["id"] for e in overlapping(split, test)}
        for e in split:
            if e["id"] in leaked:
                drops.add("overlaps_test", e["id"], f"{e['id']} ({name}) equals a held-out test example")
        if name == "train":
            train = [e for e in train if e["id"] not in leaked]
        else:
            validation = [e for e in validation if e["id"] not in leaked]
    if not train:
        raise DataError(", ".join(s.path for s in cfg.sources), None, None, "no training examples left after filtering (see the drops above)")

    # 6: mixing by weight, then the total cap
    weights = [s.weight for s in cfg.sources]
    train = mix_by_weight([[e for e in train if source_of[e["id"]] == i] for i in range(len(cfg.sources))], weights, cfg.seed)
    if cfg.max_examples and len(train) > cfg.max_examples:
        drops.add("max_examples", f"{len(train) - cfg.max_examples} of {len(train)}", count=len(train) - cfg.max_examples)
        train = seeded_sample(train, cfg.max_examples, cfg.seed)
    for info_index, info in enumerate(infos[: len(cfg.sources)]):
        info["train"] = sum(1 for e in train if source_of.get(e["id"].split("~rep")[0]) == info_index)

    # 7: augmentation of the training split only
    augmentation: dict = {}
    aug = cfg.augment
    copies: list[dict] = []
    if aug.template_variation and aug.template_fraction > 0:
        made = template_variation(train, aug.template_fraction, cfg.seed)
        augmentation["template_variation"] = len(made)
        copies += made
    if aug.paraphrase and aug.paraphrase_fraction > 0:
        made, bad = paraphrase(train, aug.paraphrase_model, aug.paraphrase_fraction, cfg.seed)
        augmentation["paraphrase"] = len(made)
        if bad:
            augmentation["paraphrase_dropped"] = bad
        copies += made
    if copies:
        copy_lengths = dict(zip((e["id"] for e in copies), token_lengths(tokenizer, copies)))
        too_long = [e for e in copies if copy_lengths[e["id"]] > max_tokens]
        if too_long:
            augmentation["dropped_too_long"] = len(too_long)
        copies = [e for e in copies if copy_lengths[e["id"]] <= max_tokens]
        lengths.update(copy_lengths)
        train = train + copies
    check_no_overlap(train, test)
    check_no_overlap(validation, test)

    # 8: card and files
    splits = {"train": train, "validation": validation, "test": test}
    lengths_by_split = {name: [lengths.get(e["id"]) or lengths[e["id"].split("~rep")[0]] for e in rows] for name, rows in splits.items()}
    bins = shared_bins(lengths_by_split)
    hashes = {name: split_hash(rows) for name, rows in splits.items()}
    hashes["all"] = split_hash(train + validation + test)
    card = {
        "counts": {name: len(rows) for name, rows in splits.items()},
        "drops": drops.by_reason,
        "dropped_total": drops.total(),
        "tokens": {name: token_stats(values, bins) for name, values in lengths_by_split.items()},
        "hashes": hashes,
        "sources": infos,
        "augmentation": augmentation,
        "model": model_ref,
        "tokenizer_path": str(resolved.path),
        "max_tokens": max_tokens,
        "config": cfg.model_dump(mode="json"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_dir(out_dir) as tmp:
        for name, rows in splits.items():
            atomic_write_jsonl(tmp / f"{name}.jsonl", ({"id": e["id"], "messages": e["messages"], "source": e["source"]} for e in rows))
        write_card(tmp, card, lengths_by_split, bins)
    reasons = ", ".join(f"{reason} {d['count']}" for reason, d in drops.by_reason.items())
    counts = card["counts"]
    console.print(f"data: {counts['train']} train, {counts['validation']} validation, {counts['test']} test; "
                  f"{drops.total()} dropped" + (f" ({reasons})" if reasons else ""))
    return card
