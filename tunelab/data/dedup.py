"""Exact and near-duplicate removal.

Exact: two examples are duplicates when their normalised messages (and a preference pair's
rejected answer) are equal (content_hash).
Near: MinHash signatures of word 3-grams (system prompts left out, rejected answers in), indexed with datasketch's
LSH; an example is dropped when an earlier kept one has an estimated Jaccard similarity of
at least `threshold`. The first occurrence is always the one kept.
"""

from __future__ import annotations

from datasketch import MinHash, MinHashLSH

from tunelab.data.schema import content_hash, normalise_text
from tunelab.progress import progress_bar

NUM_PERM = 128


def shingles(example: dict, n: int = 3) -> set[bytes]:
    turns = [m for m in example["messages"] if m["role"] != "system"] + ([example["rejected"]] if "rejected" in example else [])
    words = normalise_text(" ".join(m["content"] for m in turns)).split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def signatures(examples: list[dict], chunk: int = 512) -> list[MinHash]:
    """MinHash signatures of every example (datasketch's bulk path: one set of permutations)."""
    result: list[MinHash] = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("MinHash signatures", total=len(examples), info="")
        for start in range(0, len(examples), chunk):
            part = examples[start : start + chunk]
            result += MinHash.bulk([list(shingles(e)) for e in part], num_perm=NUM_PERM, seed=1)
            bar.update(task, advance=len(part))
    return result


def exact_dedup(examples: list[dict]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(kept, [(dropped, id of the kept copy)])."""
    first: dict[str, str] = {}
    kept, dropped = [], []
    for e in examples:
        h = content_hash(e)
        if h in first:
            dropped.append((e, first[h]))
        else:
            first[h] = e["id"]
            kept.append(e)
    return kept, dropped


def near_dedup(examples: list[dict], threshold: float) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(kept, [(dropped, id of the similar kept example)])."""
    # LSH only proposes candidates (it cannot be built for 1.0); the Jaccard estimate decides
    lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=NUM_PERM)
    kept_signatures: dict[str, MinHash] = {}
    kept, dropped = [], []
    all_signatures = signatures(examples)
    with progress_bar(transient=True) as bar:
        task = bar.add_task("Near-duplicates", total=len(examples), info="")
        for e, sig in zip(examples, all_signatures):
            similar = [k for k in lsh.query(sig) if kept_signatures[k].jaccard(sig) >= threshold]
            if similar:
                dropped.append((e, similar[0]))
            else:
                lsh.insert(e["id"], sig)
                kept_signatures[e["id"]] = sig
                kept.append(e)
            bar.update(task, advance=1, info=f"{len(dropped)} dropped")
    return kept, dropped
