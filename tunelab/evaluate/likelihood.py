"""Log-likelihood scoring of any ChatModel: perplexity of the reference answers and multiple-choice
selection. Only the continuation tokens (answer or choice) are scored; the prompt is rendered with
the model's own chat template, exactly as for generation. The scoring itself is the backend's
`loglikelihood` (batched forward passes in transformers, llama.cpp's logits for a GGUF).
"""

from __future__ import annotations

import math


def prompt_text(tokenizer, prompt_messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)


def answer_pair(tokenizer, prompt_messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer as the template renders an assistant turn (with its end-of-turn)."""
    prompt = prompt_text(tokenizer, prompt_messages)
    full = tokenizer.apply_chat_template([*prompt_messages, {"role": "assistant", "content": answer}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if full.startswith(prompt):
        answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    else:  # a template that renders the last turn differently: split the full text by token count
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        answer_ids = full_ids[len(prompt_ids) :]
    return prompt_ids, answer_ids


def choice_pair(tokenizer, prompt_messages: list[dict], choice: str) -> tuple[list[int], list[int]]:
    """(prompt ids, choice ids): the choice text right after the generation prompt."""
    prompt_ids = tokenizer(prompt_text(tokenizer, prompt_messages), add_special_tokens=False)["input_ids"]
    return prompt_ids, tokenizer(choice, add_special_tokens=False)["input_ids"]


def perplexities(chat, prompts: list[list[dict]], answers: list[str], batch_size: int = 8, on_batch=None) -> tuple[list[float], float]:
    """Per-example perplexity of each reference answer, and the corpus perplexity exp(total NLL / total tokens)."""
    pairs = [answer_pair(chat.tokenizer, p, a) for p, a in zip(prompts, answers)]
    scored = chat.loglikelihood(pairs, batch_size, on_batch)
    per_example = [math.exp(-lp / n) for lp, n in scored]
    corpus = math.exp(-sum(lp for lp, _ in scored) / sum(n for _, n in scored))
    return per_example, corpus


def choose(chat, prompts: list[list[dict]], choices: list[list[str]], batch_size: int = 8, on_batch=None) -> list[int]:
    """Index of the most likely choice (highest summed log-likelihood) for each prompt."""
    pairs, owner = [], []
    for k, (p, options) in enumerate(zip(prompts, choices)):
        for c in options:
            pairs.append(choice_pair(chat.tokenizer, p, c))
            owner.append(k)
    scored = chat.loglikelihood(pairs, batch_size, on_batch)
    best: list[tuple[float, int]] = [(-math.inf, -1)] * len(prompts)
    position = [0] * len(prompts)
    for (lp, _), k in zip(scored, owner):
        if lp > best[k][0]:
            best[k] = (lp, position[k])
        position[k] += 1
    return [b[1] for b in best]
