"""Data-centric augmentation of the training split (never the test split).

- `template_variation`: copies of a seeded share of examples whose last user turn is rewrapped
  in a different instruction template ("Question: ...", "Please help me with this: ...").
- `paraphrase`: a model tunelab can run rewrites the last user turn of a seeded share of
  examples (batched, greedy); the original answer is kept. Empty or degenerate rewrites
  (echoes, refusals, runaway repetition, far too long or short) are dropped and counted.
Copies get the id `<id>~template` / `<id>~paraphrase` and keep the original's `source`.
"""

from __future__ import annotations

import random
import re

from tunelab.data.clean import REFUSAL
from tunelab.data.schema import last_user_index, normalise_text
from tunelab.models.chat import load_chat_model
from tunelab.models.interface import GenerationSettings
from tunelab.progress import progress_bar

TEMPLATES = [
    "Question: {text}",
    "Please help me with this: {text}",
    "{text}\n\nPlease answer the request above.",
    "Task: {text}",
    "Here is a request:\n{text}",
    "I need some help. {text}",
    "Could you do the following?\n{text}",
    "Instruction:\n{text}",
]
PARAPHRASE_SYSTEM = "You rewrite instructions in different words. You never answer them."
PARAPHRASE_PROMPT = (
    "Rewrite the following instruction in different words. Keep its meaning and every detail "
    "(names, numbers, code). Reply with the rewritten instruction only.\n\nInstruction:\n{text}"
)
MAX_PARAPHRASE_CHARS = 1000  # longer turns (code, long inputs) are not paraphrased


def _choose(examples: list[dict], fraction: float, seed: int, eligible) -> list[int]:
    candidates = [i for i, e in enumerate(examples) if eligible(e)]
    k = min(len(candidates), round(fraction * len(examples)))
    return sorted(random.Random(seed).sample(candidates, k))


def _with_user_turn(example: dict, text: str, kind: str) -> dict:
    i = last_user_index(example)
    messages = [dict(m) for m in example["messages"]]
    messages[i]["content"] = text
    copy = {"id": f"{example['id']}~{kind}", "messages": messages}
    if "rejected" in example:  # a preference pair stays a pair: the same two answers to the reworded prompt
        copy["rejected"] = example["rejected"]
    return {**copy, "source": example["source"]}


def template_variation(examples: list[dict], fraction: float, seed: int) -> list[dict]:
    """New copies of round(fraction × n) examples with their last user turn rewrapped in a template."""
    rng = random.Random(seed + 1)
    chosen = _choose(examples, fraction, seed, lambda e: last_user_index(e) is not None)
    copies = []
    for i in chosen:
        e = examples[i]
        text = e["messages"][last_user_index(e)]["content"]
        copies.append(_with_user_turn(e, rng.choice(TEMPLATES).format(text=text), "template"))
    return copies


def clean_paraphrase(text: str) -> str:
    """Strip the wrappers small models add: 'Rewritten instruction:', quotes."""
    text = text.strip()
    text = re.sub(
        r"^(?:here is |here's )?(?:the )?(?:rewritten|paraphrased|new) (?:instruction|version|text)\s*:?\s*", "", text, flags=re.IGNORECASE
    )
    text = re.sub(r"^instruction\s*:\s*", "", text, flags=re.IGNORECASE).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def paraphrase_problem(original: str, new: str) -> str | None:
    """Why a paraphrase is unusable, or None when it is fine."""
    if not new.strip():
        return "empty"
    if re.findall(r"\w+", normalise_text(new)) == re.findall(r"\w+", normalise_text(original)):  # punctuation aside
        return "unchanged"
    if len(new) < max(3, 0.3 * len(original)) or len(new) > 3 * len(original) + 80:
        return "length"
    words = new.split()
    if len(words) >= 8 and len(set(words)) / len(words) < 0.4:
        return "repetitive"
    if REFUSAL.search(new) or "<|" in new:
        return "degenerate"
    return None


def paraphrase(
    examples: list[dict], model_ref: str, fraction: float, seed: int, *, batch_size: int = 8, max_new_tokens: int = 128, chat_model=None
) -> tuple[list[dict], dict[str, int]]:
    """(new paraphrased copies, {drop reason: count}) for round(fraction × n) examples.

    `chat_model` may be given to reuse a loaded model; otherwise `load_chat_model(model_ref)`.
    """
    eligible = lambda e: last_user_index(e) is not None and len(e["messages"][last_user_index(e)]["content"]) <= MAX_PARAPHRASE_CHARS  # noqa: E731
    chosen = _choose(examples, fraction, seed, eligible)
    if not chosen:
        return [], {}
    model = chat_model or load_chat_model(model_ref)
    originals = [examples[i]["messages"][last_user_index(examples[i])]["content"] for i in chosen]
    rewrites: list[str] = []
    with progress_bar() as bar:
        task = bar.add_task("Paraphrasing", total=len(chosen), info="")
        for start in range(0, len(chosen), batch_size):
            batch = originals[start : start + batch_size]
            conversations = [
                [{"role": "system", "content": PARAPHRASE_SYSTEM}, {"role": "user", "content": PARAPHRASE_PROMPT.format(text=t)}]
                for t in batch
            ]
            # a paraphrase needs about as many tokens as the original (~4 characters a token); allow twice that
            budget = min(max_new_tokens, max(len(t) for t in batch) // 2 + 16)
            settings = GenerationSettings(max_new_tokens=budget, temperature=0.0, seed=seed)
            rewrites += model.generate(conversations, settings, batch_size=batch_size)
            bar.update(task, advance=len(batch))
    copies, drops = [], {}
    for i, original, new in zip(chosen, originals, rewrites):
        new = clean_paraphrase(new)
        problem = paraphrase_problem(original, new)
        if problem:
            drops[problem] = drops.get(problem, 0) + 1
            continue
        copies.append(_with_user_turn(examples[i], new, "paraphrase"))
    return copies, drops
