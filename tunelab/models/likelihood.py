"""Log-likelihood of continuations under a transformers model: the core of perplexity and
multiple-choice scoring (tunelab/evaluate/likelihood.py builds the token pairs) and of
`HFChatModel.loglikelihood`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MAX_TOKENS = 2048
MAX_BATCH_TOKENS = 4096


def max_tokens(model, tokenizer) -> int:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or MAX_TOKENS
    return int(min(limit, tokenizer.model_max_length or limit, MAX_TOKENS))


def batches(order: list[int], lengths: list[int], batch_size: int, max_batch_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Consecutive groups of `order` (sorted by length) with at most `batch_size` sequences and, padded,
    at most `max_batch_tokens` tokens: the logits of a batch take batch × length × vocabulary floats."""
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and (len(out[-1]) + 1) * max(lengths[i], *(lengths[j] for j in out[-1])) <= max_batch_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@dataclass
class Row:
    """One sequence of a batch: a prompt followed by one or more continuations scored after it."""

    prompt: list[int]
    continuations: list[tuple[int, list[int]]] = field(default_factory=list)  # (pair index, token ids)

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(len(c) for _, c in self.continuations)

    @property
    def scored(self) -> int:
        return sum(len(c) for _, c in self.continuations)


def build_rows(pairs: list[tuple[list[int], list[int]]], limit: int) -> list[Row]:
    """Pairs with the same prompt share one row (the prompt is computed once, e.g. for the four
    choices of an ARC question) while it fits the context; a pair that does not fit alone keeps
    its last tokens (the prompt is cut first)."""
    rows: dict[tuple[int, ...], Row] = {}
    alone: list[Row] = []
    for i, (prompt_ids, cont_ids) in enumerate(pairs):
        if not cont_ids:
            raise ValueError("an empty continuation cannot be scored")
        if len(prompt_ids) + len(cont_ids) > limit:
            ids = (prompt_ids + cont_ids)[-limit:]
            n_cont = min(len(cont_ids), len(ids) - 1)  # the first token has no prediction
            alone.append(Row(ids[: len(ids) - n_cont], [(i, ids[len(ids) - n_cont :])]))
            continue
        row = rows.get(tuple(prompt_ids))
        if row is None or row.length + len(cont_ids) > limit:
            row = rows[tuple(prompt_ids)] = Row(list(prompt_ids))
            alone.append(row)  # kept in order; a full row is replaced in the dict by a fresh one
        row.continuations.append((i, list(cont_ids)))
    return alone


def row_tensors(rows: list[Row], pad: int) -> dict:
    """Left-padded ids, a 4D boolean mask (each continuation sees the prompt and itself), positions
    that restart after the prompt for every continuation, and (row, source, target, pair) indices
    into the kept logits, whose window starts at each row's last prompt token."""
    width = max(r.length for r in rows)
    keep = max(r.scored for r in rows) + 1
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # padding attends to itself: no NaN
    gather: list[tuple[int, int, int, int]] = []
    for b, row in enumerate(rows):
        start, n_prompt = width - row.length, len(row.prompt)
        ids[b, start : start + n_prompt] = torch.tensor(row.prompt)
        positions[b, start : start + n_prompt] = torch.arange(n_prompt)
        mask[b, start : start + n_prompt, start : start + n_prompt] = torch.ones(n_prompt, n_prompt, dtype=torch.bool).tril()
        at = start + n_prompt
        for pair, cont in row.continuations:
            n = len(cont)
            ids[b, at : at + n] = torch.tensor(cont)
            positions[b, at : at + n] = torch.arange(n_prompt, n_prompt + n)
            mask[b, at : at + n, start : start + n_prompt] = True
            mask[b, at : at + n, at : at + n] = torch.ones(n, n, dtype=torch.bool).tril()
            first = at - (width - keep)  # this continuation's first token, in the kept window
            for k, token in enumerate(cont):
                source = (keep - row.scored - 1) if k == 0 else first + k - 1  # the last prompt token predicts token 0
                gather.append((b, source, token, pair))
            at += n
    return {"ids": ids, "mask": mask[:, None], "positions": positions, "keep": keep, "gather": gather}


def continuation_logprobs(
    model,
    tokenizer,
    pairs: list[tuple[list[int], list[int]]],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    *,
    bf16: bool = False,
) -> list[tuple[float, int]]:
    """For each (prompt ids, continuation ids): (sum of log-probabilities of the continuation, its token count).

    Continuations of the same prompt share one row, so the prompt is computed once. Rows are
    padded on the left, so every row's continuations end in the last columns and the model
    computes logits only there (`logits_to_keep`): with a large vocabulary the output projection
    of the prompt positions would cost more than the rest of the model. Sequences longer than the
    model's context keep their last tokens (the prompt is cut first). `bf16` runs the forward pass
    under bfloat16 autocast (faster on CPUs with AVX512-BF16).
    """
    rows = build_rows(pairs, max_tokens(model, tokenizer))
    totals = [0.0] * len(pairs)
    counts = [0] * len(pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)
    for idx in batches(order, [r.length for r in rows], batch_size):
        batch = row_tensors([rows[i] for i in idx], pad)
        with torch.inference_mode(), precision:
            out = model(
                input_ids=batch["ids"].to(device),
                attention_mask=batch["mask"].to(device),
                position_ids=batch["positions"].to(device),
                logits_to_keep=batch["keep"],
            )
        logits = out.logits.float()
        b, source, target, pair = (torch.tensor(x) for x in zip(*batch["gather"]))
        logprobs = logits[b, source, target] - torch.logsumexp(logits[b, source], dim=-1)
        for p, value in zip(pair.tolist(), logprobs.tolist()):
            totals[p] += value
            counts[p] += 1
        if on_batch:
            on_batch(sum(len(rows[i].continuations) for i in idx))
    return list(zip(totals, counts))
