"""Log-likelihoods of continuations from a GGUF model, through llama.cpp's logits.

The same contract as `tunelab.models.likelihood.continuation_logprobs` (transformers): for each
(prompt ids, continuation ids), the summed log-probability of the continuation and its token
count, so perplexity and multiple choice score a GGUF like the model it came from.

llama-cpp-python keeps the logits of every position only when the `Llama` is created with
`logits_all=True` (tunelab.models.llama_cpp.scoring_llama does); it then holds an n_ctx × vocabulary float32 array
(2048 × 49,152 for SmolLM2: 384 MiB), so scoring uses a modest context of its own rather than
the chat model's. Consecutive pairs that share a prompt reuse its evaluated prefix (llama.cpp's
KV cache), as multiple-choice questions do.

`TemplateTokenizer` answers the two calls `tunelab.evaluate.likelihood` makes on a tokenizer
from the GGUF's own chat template and tokenizer, so its `answer_pair` and `choice_pair` build
the (prompt, continuation) ids for a GGUF unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tunelab.errors import TunelabError

SCORING_CONTEXT = 2048  # as tunelab.models.likelihood.MAX_TOKENS


class TemplateTokenizer:
    """`apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` and
    `tokenizer(text, add_special_tokens=False)["input_ids"]` over a llama_cpp.Llama, rendered with
    the chat template stored in the GGUF (jinja, as llama-cpp-python renders it for chat)."""

    def __init__(self, llm, chat_template: str, bos_token: str, eos_token: str):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # optional dependency (the gguf extra)

        self.llm = llm
        self.formatters = {
            with_prompt: Jinja2ChatFormatter(
                template=chat_template, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=with_prompt
            )
            for with_prompt in (True, False)
        }

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        if tokenize:
            raise ValueError("TemplateTokenizer renders text only (tokenize=False)")
        return self.formatters[add_generation_prompt](messages=messages).prompt

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        # the template writes special tokens itself, as with transformers' add_special_tokens=False
        return {"input_ids": self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)}


def log_softmax_at(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    """log p(target) for each row of logits (float64, max-shifted for stability)."""
    rows = logits.astype(np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return shifted[np.arange(len(targets)), targets] - log_norm


def evaluate_from_shared_prefix(llm, ids: list[int]) -> None:
    """Evaluate `ids`, keeping what is already evaluated of a common prefix (at least the last token is run)."""
    done = llm.input_ids[: llm.n_tokens]
    keep = 0
    while keep < min(len(done), len(ids) - 1) and done[keep] == ids[keep]:
        keep += 1
    llm.n_tokens = keep  # Llama.eval drops the KV cache from here on and refills it
    llm.eval(ids[keep:])


def continuation_logprobs(
    llm, pairs: list[tuple[list[int], list[int]]], on_pair: Callable[[int], None] | None = None
) -> list[tuple[float, int]]:
    """For each (prompt ids, continuation ids): (sum of log-probabilities of the continuation, its token count).

    Sequences longer than the context keep their last tokens (the prompt is cut first)."""
    if not getattr(llm, "_logits_all", False):
        raise TunelabError(
            "scoring a GGUF needs every position's logits: create the Llama with logits_all=True (see tunelab.models.llama_cpp.scoring_llama)"
        )
    limit = min(llm.n_ctx(), len(llm.input_ids), len(llm.scores))  # llama.cpp may round its context up; the Python arrays are not
    results = []
    for prompt_ids, cont_ids in pairs:
        if not cont_ids:
            raise ValueError("an empty continuation cannot be scored")
        ids = (list(prompt_ids) + list(cont_ids))[-limit:]
        n_cont = min(len(cont_ids), len(ids) - 1)  # the first token has no prediction
        evaluate_from_shared_prefix(llm, ids)
        start = len(ids) - n_cont
        predicting = np.asarray(llm.scores[start - 1 : len(ids) - 1])  # row i predicts token i + 1
        results.append((float(log_softmax_at(predicting, ids[start:]).sum()), n_cont))
        if on_pair:
            on_pair(1)
    return results
