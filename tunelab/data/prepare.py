"""The data stage: sources → validated, cleaned, deduplicated, split, mixed, augmented splits + card.

Order of work (each step's drops are counted by reason in the card):
1. read every source (invalid records: raise when `strict`, else drop);
2. clean text, re-validate, quality and length filters (tokens of the chat-templated example);
3. exact or near deduplication across all sources (the first copy is kept);
4. per-source `max_examples` (seeded sample);
5. split: test from `eval_source` when set, else cut from the pool; validation from the pool;
   a replay source (one with a `share`) goes to training only; training (and validation)
   examples equal to a test example are dropped ("overlaps_test");
6. mixing of the training split by source `weight`, then total `max_examples`, then each replay
   source sampled to its `share` of the whole split (see `mix_and_cap`);
7. augmentation of the training split only;
8. write {train,validation,test}.jsonl, card.json, card.md, lengths.png into a temporary
   folder that is renamed to `out_dir` at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tunelab.config import DataConfig, DataSource
from tunelab.data.augment import paraphrase, template_variation
from tunelab.data.card import shared_bins, token_stats, write_card
from tunelab.data.clean import clean_example, quality_problem
from tunelab.data.dedup import exact_dedup, near_dedup
from tunelab.data.loaders import read_source
from tunelab.data.python_functions import is_python
from tunelab.data.schema import InvalidRecord, conversations, is_pair, split_hash, validate_example, where
from tunelab.data.split import check_no_overlap, overlapping, seeded_sample, split_examples
from tunelab.errors import DataError
from tunelab.io import atomic_dir, atomic_write_jsonl
from tunelab.models.load import load_tokenizer
from tunelab.models.resolve import resolve_model
from tunelab.progress import console, progress_bar
from tunelab.runs import DataDir


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
    """Tokens of each example rendered with the model's chat template (a preference pair: its longer side)."""
    lengths: list[int] = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("Measuring tokens", total=len(examples), info="")
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            owners, texts = [], []
            for k, e in enumerate(chunk):
                for conversation in conversations(e):
                    owners.append(k)
                    texts.append(tokenizer.apply_chat_template(conversation, tokenize=False))
            longest = [0] * len(chunk)
            for k, ids in zip(owners, tokenizer(texts, add_special_tokens=False)["input_ids"]):
                longest[k] = max(longest[k], len(ids))
            lengths += longest
            bar.update(task, advance=len(chunk))
    return lengths


def filter_examples(
    examples: list[dict], cfg: DataConfig, tokenizer, max_tokens: int, drops: Drops, held_out: bool = False
) -> tuple[list[dict], dict[str, int]]:
    """Clean, re-validate, quality and length filters. Returns (kept, {id: tokens}).

    A separate held-out set (`eval_source`) is cleaned and validated only: the quality and length
    filters choose training data, and must not change the test set a change is measured on."""
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
        problem = None if held_out else quality_problem(e, cfg.min_answer_chars, cfg.quality_filter)
        if problem:
            drops.add(problem, e["id"])
            continue
        kept.append(e)
    lengths = dict(zip((e["id"] for e in kept), token_lengths(tokenizer, kept)))
    result = []
    for e in kept:
        n = lengths[e["id"]]
        if held_out:
            result.append(e)
        elif n > max_tokens:
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


@dataclass
class Preparation:
    """What the steps of prepare_data share: the settings, the tokenizer, and what they counted so far."""

    cfg: DataConfig
    tokenizer: object
    max_tokens: int
    drops: Drops = field(default_factory=Drops)
    seen_ids: set[str] = field(default_factory=set)
    lengths: dict[str, int] = field(default_factory=dict)  # example id -> tokens, chat template applied
    source_of: dict[str, int] = field(default_factory=dict)  # example id -> index in cfg.sources
    infos: list[dict] = field(default_factory=list)  # one per source (and the eval source), for the card

    def is_replay(self, example: dict) -> bool:
        """Whether the example comes from a source with a `share` (training only)."""
        return self.cfg.sources[self.source_of[example["id"]]].share is not None


def prepare_data(data_cfg: DataConfig, out_dir: Path, model_ref: str, max_seq_length: int) -> dict:
    """Build the data splits and card in `out_dir` (atomically); return the card. Steps as in the module docstring."""
    cfg = data_cfg
    resolved = resolve_model(model_ref)
    prep = Preparation(cfg, load_tokenizer(resolved.path), cfg.max_tokens or max_seq_length)
    pool, eval_examples = read_sources(prep)
    pool = deduplicate(prep, pool, cfg.dedup)
    if eval_examples is not None:
        eval_examples = deduplicate(prep, eval_examples, "exact" if cfg.dedup != "none" else "none")
    pool = cap_sources(prep, pool)
    train, validation, test = split_without_leaks(prep, pool, eval_examples)
    train = mix_and_cap(prep, train)
    train, augmentation = augment_training(prep, train)
    check_no_overlap(train, test)
    check_no_overlap(validation, test)

    splits = {"train": train, "validation": validation, "test": test}
    lengths_by_split = {
        name: [prep.lengths.get(e["id"]) or prep.lengths[e["id"].split("~rep")[0]] for e in rows] for name, rows in splits.items()
    }
    bins = shared_bins(lengths_by_split)
    card = build_card(prep, splits, lengths_by_split, bins, augmentation, model_ref, resolved.path)
    with atomic_dir(Path(out_dir)) as tmp:
        for name, rows in splits.items():
            atomic_write_jsonl(DataDir(tmp).split(name), (split_row(e) for e in rows))
        write_card(tmp, card, lengths_by_split, bins)
    reasons = ", ".join(f"{reason} {d['count']}" for reason, d in prep.drops.by_reason.items())
    counts = card["counts"]
    console.print(
        f"data: {counts['train']} train, {counts['validation']} validation, {counts['test']} test"
        + (" (preference pairs)" if card.get("pairs", {}).get("train") == counts["train"] else "")
        + "; "
        f"{prep.drops.total()} dropped" + (f" ({reasons})" if reasons else "")
    )
    return card


def split_row(example: dict) -> dict:
    """A line of a prepared split: id, messages, a preference pair's rejected answer, source."""
    row = {"id": example["id"], "messages": example["messages"]}
    if is_pair(example):
        row["rejected"] = example["rejected"]
    return {**row, "source": example["source"]}


# ---------------------------------------------------------------- the steps
def load_source_examples(prep: Preparation, source: DataSource, is_eval: bool = False) -> tuple[list[dict], dict]:
    """One source read (invalid records counted), ids made unique, cleaned and filtered."""
    examples, invalid, info = read_source(source, strict=prep.cfg.strict)
    for err in invalid:
        prep.drops.add_invalid(err)
    unique_ids(examples, prep.seen_ids)
    if source.answers == "python":
        python = {e["id"] for e in examples if is_python(e["messages"][-1]["content"])}
        for e in examples:
            if e["id"] not in python:
                prep.drops.add("answer_not_python", e["id"])
        examples = [e for e in examples if e["id"] in python]
    examples, source_lengths = filter_examples(examples, prep.cfg, prep.tokenizer, prep.max_tokens, prep.drops, held_out=is_eval)
    prep.lengths.update(source_lengths)
    info.update(eval=is_eval, valid=len(examples))
    prep.infos.append(info)
    return examples, info


def read_sources(prep: Preparation) -> tuple[list[dict], list[dict] | None]:
    """Steps 1-2: every training source into one pool, and the separate held-out source if any."""
    pool: list[dict] = []
    for i, source in enumerate(prep.cfg.sources):
        examples, _ = load_source_examples(prep, source)
        pool += examples
        prep.source_of.update((e["id"], i) for e in examples)
    eval_examples = None
    if prep.cfg.eval_source is not None:
        eval_examples, _ = load_source_examples(prep, prep.cfg.eval_source, is_eval=True)
    return pool, eval_examples


def deduplicate(prep: Preparation, examples: list[dict], mode: str) -> list[dict]:
    """Step 3: exact, or exact then near duplicates removed (the first copy is kept)."""
    if mode == "none":
        return examples
    examples, dropped = exact_dedup(examples)
    for e, kept_id in dropped:
        prep.drops.add("exact_duplicate", e["id"], f"{e['id']} repeats {kept_id}")
    if mode == "near":
        examples, dropped = near_dedup(examples, prep.cfg.near_dup_threshold)
        for e, kept_id in dropped:
            prep.drops.add("near_duplicate", e["id"], f"{e['id']} is a near copy of {kept_id}")
    return examples


def cap_sources(prep: Preparation, pool: list[dict]) -> list[dict]:
    """Step 4: each source's `max_examples` (a seeded sample)."""
    cfg = prep.cfg
    for i, source in enumerate(cfg.sources):
        mine = [e for e in pool if prep.source_of[e["id"]] == i]
        if source.max_examples and len(mine) > source.max_examples:
            keep = {e["id"] for e in seeded_sample(mine, source.max_examples, cfg.seed + i)}
            prep.drops.add("source_max_examples", source.path, count=len(mine) - len(keep))
            pool = [e for e in pool if prep.source_of[e["id"]] != i or e["id"] in keep]
    return pool


def split_without_leaks(prep: Preparation, pool: list[dict], eval_examples: list[dict] | None) -> tuple[list[dict], list[dict], list[dict]]:
    """Step 5: train/validation/test; training and validation examples equal to a test example are dropped.

    Replay examples (sources with a `share`) join training only, so the validation and test splits,
    and what is chosen on them, stay the same whatever the share."""
    cfg = prep.cfg
    replay = [e for e in pool if prep.is_replay(e)]
    pool = [e for e in pool if not prep.is_replay(e)]
    if eval_examples is None:
        train, validation, test = split_examples(
            pool,
            seed=cfg.seed,
            test_size=cfg.test_size,
            test_fraction=cfg.test_fraction,
            validation_size=cfg.validation_size,
            validation_fraction=cfg.validation_fraction,
        )
    else:
        train, validation, _ = split_examples(
            pool, seed=cfg.seed, validation_size=cfg.validation_size, validation_fraction=cfg.validation_fraction
        )
        test = seeded_sample(eval_examples, cfg.test_size, cfg.seed) if cfg.test_size is not None else eval_examples
    train = train + replay
    train, validation = (drop_test_overlap(prep, split, test, name) for name, split in (("train", train), ("validation", validation)))
    if not train:
        raise DataError(
            ", ".join(s.path for s in cfg.sources), None, None, "no training examples left after filtering (see the drops above)"
        )
    return train, validation, test


def drop_test_overlap(prep: Preparation, split: list[dict], test: list[dict], name: str) -> list[dict]:
    leaked = {e["id"] for e in overlapping(split, test)}
    for e in split:
        if e["id"] in leaked:
            prep.drops.add("overlaps_test", e["id"], f"{e['id']} ({name}) equals a held-out test example")
    return [e for e in split if e["id"] not in leaked]


def mix_and_cap(prep: Preparation, train: list[dict]) -> list[dict]:
    """Step 6: the training split mixed by source weight, capped at `max_examples` (less the replay
    shares), then each replay source sampled to its `share` of the whole split.

    With replay shares s_i adding up to S, the task part of n examples is (1 − S) of the split, so the
    split holds n / (1 − S) examples and replay source i round(s_i × n / (1 − S)) of them."""
    cfg = prep.cfg
    by_source = [[e for e in train if prep.source_of[e["id"]] == i] for i in range(len(cfg.sources))]
    shares = [s.share for s in cfg.sources]
    task_rows = [[] if share is not None else rows for rows, share in zip(by_source, shares)]
    train = mix_by_weight(task_rows, [s.weight for s in cfg.sources], cfg.seed)
    replay_share = sum(share or 0.0 for share in shares)
    cap = round(cfg.max_examples * (1 - replay_share)) if cfg.max_examples else None
    if cap and len(train) > cap:
        prep.drops.add("max_examples", f"{len(train) - cap} of {len(train)}", count=len(train) - cap)
        train = seeded_sample(train, cap, cfg.seed)
    total = len(train) / (1 - replay_share)
    for i, (rows, share) in enumerate(zip(by_source, shares)):
        if share and not rows:
            raise DataError(cfg.sources[i].path, None, "share", f"share {share:g}, but no example of this source is left to replay")
    # mix_by_weight takes round(weight × size) of a source: this weight gives round(share × total)
    replay_weights = [round(share * total) / len(rows) if share and rows else 0.0 for rows, share in zip(by_source, shares)]
    replay_rows = [rows if share else [] for rows, share in zip(by_source, shares)]
    train += mix_by_weight(replay_rows, replay_weights, cfg.seed)
    for index, info in enumerate(prep.infos[: len(cfg.sources)]):
        info["train"] = sum(1 for e in train if prep.source_of.get(e["id"].split("~rep")[0]) == index)
        if shares[index] is not None:
            info["share"] = shares[index]
    return train


def augment_training(prep: Preparation, train: list[dict]) -> tuple[list[dict], dict]:
    """Step 7: template variations and paraphrases of training examples; copies over the length limit are dropped."""
    augmentation: dict = {}
    aug = prep.cfg.augment
    copies: list[dict] = []
    if aug.template_variation and aug.template_fraction > 0:
        made = template_variation(train, aug.template_fraction, prep.cfg.seed)
        augmentation["template_variation"] = len(made)
        copies += made
    if aug.paraphrase and aug.paraphrase_fraction > 0:
        made, bad = paraphrase(train, aug.paraphrase_model, aug.paraphrase_fraction, prep.cfg.seed)
        augmentation["paraphrase"] = len(made)
        if bad:
            augmentation["paraphrase_dropped"] = bad
        copies += made
    if not copies:
        return train, augmentation
    copy_lengths = dict(zip((e["id"] for e in copies), token_lengths(prep.tokenizer, copies)))
    too_long = [e for e in copies if copy_lengths[e["id"]] > prep.max_tokens]
    if too_long:
        augmentation["dropped_too_long"] = len(too_long)
    prep.lengths.update(copy_lengths)
    return train + [e for e in copies if copy_lengths[e["id"]] <= prep.max_tokens], augmentation


def build_card(prep: Preparation, splits: dict, lengths_by_split: dict, bins, augmentation: dict, model_ref: str, tokenizer_path) -> dict:
    """Step 8: the data card: counts, drops by reason, token statistics, content hashes, sources, settings."""
    hashes = {name: split_hash(rows) for name, rows in splits.items()}
    hashes["all"] = split_hash(splits["train"] + splits["validation"] + splits["test"])
    card = {
        "counts": {name: len(rows) for name, rows in splits.items()},
        "drops": prep.drops.by_reason,
        "dropped_total": prep.drops.total(),
        "tokens": {name: token_stats(values, bins) for name, values in lengths_by_split.items()},
        "hashes": hashes,
        "sources": prep.infos,
        "augmentation": augmentation,
        "model": model_ref,
        "tokenizer_path": str(tokenizer_path),
        "max_tokens": prep.max_tokens,
        "config": prep.cfg.model_dump(mode="json"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if any(is_pair(e) for rows in splits.values() for e in rows):  # preference pairs (the rest: plain conversations)
        card["pairs"] = {name: sum(1 for e in rows if is_pair(e)) for name, rows in splits.items()}
    return card
