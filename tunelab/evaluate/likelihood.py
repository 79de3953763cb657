"""Log-likelihood scoring with a transformers model: perplexity of the reference answers and
multiple-choice selection. Only the continuation tokens (answer or choice) are scored; the
prompt is rendered with the model's own chat template, exactly as for generation.
"""
from __future__ import annotations

import math
from typing import Callable

MAX_TOKENS = 2048
MAX_BATCH_TOKENS = 4096


def prompt_text(tokenizer, prompt_messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)


def answer_pair(tokenizer, prompt_messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer as the template renders an assistant turn (with its end-of-turn)."""
    prompt = prompt_text(tokenizer, prompt_messages)
    full = tokenizer.apply_chat_template([*prompt_messages, {"role": "assistant", "content": answer}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if full.startswith(prompt):
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    else:  # a template that renders the last turn differently: split the full text by token count
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        answer_ids = full_ids[len(prompt_ids):]
    return prompt_ids, answer_ids


def choice_pair(tokenizer, prompt_messages: list[dict], choice: str) -> tuple[list[int], list[int]]:
    """(prompt ids, choice ids): the choice text right after the generation prompt."""
    prompt_ids = tokenizer(prompt_text(tokenizer, prompt_messages), add_special_tokens=False)["input_ids"]
    return prompt_ids, tokenizer(choice, add_special_tokens=False)["input_ids"]


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


def continuation_logprobs(model, tokenizer, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> list[tuple[float, int]]:
    """For each (prompt ids, continuation ids): (sum of log-probabilities of the continuation, its token count).

    Sequences longer than the model's context keep their last tokens (the prompt is cut first).
    """
    import torch
    import torch.nn.functional as F

    limit = max_tokens(model, tokenizer)
    rows = []
    for prompt_ids, cont_ids in pairs:
        if not cont_ids:
            raise ValueError("an empty continuation cannot be scored")
        ids = (prompt_ids + cont_ids)[-limit:]
        n_cont = min(len(cont_ids), len(ids) - 1)  # the first token has no prediction
        rows.append((ids, n_cont))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for idx in batches(order, [len(r[0]) for r in rows], batch_size):
        width = max(len(rows[i][0]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        for j, i in enumerate(idx):
            ids, n_cont = rows[i]
            input_ids[j, : len(ids)] = torch.tensor(ids)
            attention[j, : len(ids)] = 1
            labels[j, len(ids) - n_cont : len(ids)] = torch.tensor(ids[len(ids) - n_cont :])
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        shifted_labels = labels[:, 1:].to(device)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shifted_labels.reshape(-1), ignore_index=-100, reduction="none").view(len(idx), -1)
        mask = shifted_labels != -100
        sums = (nll * mask).sum(dim=1)
        for j, i in enumerate(idx):
            results[i] = (-float(sums[j]), int(mask[j].sum()))
        if on_batch:
            on_batch(len(idx))
    return results


def perplexities(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8, on_batch=None) -> tuple[list[float], float]:
    """Per-example perplexity of each reference answer, and the corpus perplexity exp(total NLL / total tokens)."""
    pairs = [answer_pair(tokenizer, p, a) for p, a in zip(prompts, answers)]
    scored = continuation_logprobs(model, tokenizer, pairs, batch_size, on_batch)
    per_example = [math.exp(-lp / n) for lp, n in scored]
    corpus = math.exp(-sum(lp for lp, _ in scored) / sum(n for _, n in scored))
    return per_example, corpus


def choose(model, tokenizer, prompts: list[list[dict]], choices: list[list[str]], batch_size: int = 8, on_batch=None) -> list[int]:
    """Index of the most likely choice (highest summed log-likelihood) for each prompt."""
    pairs, owner = [], []
    for k, (p, options) in enumerate(zip(prompts, choices)):
        for c in options:
            pairs.append(choice_pair(tokenizer, p, c))
            owner.append(k)
    scored = continuation_logprobs(model, tokenizer, pairs, batch_size, on_batch)
    best: list[tuple[float, int]] = [(-math.inf, -1)] * len(prompts)
    position = [0] * len(prompts)
    for (lp, _), k in zip(scored, owner):
        if lp > best[k][0]:
            best[k] = (lp, position[k])
        position[k] += 1
    return [b[1] for b in best]
