"""Continuation log-likelihoods from llama.cpp's logits agree with the same model's transformers ones:
an f32 GGUF to float rounding, an f16 GGUF within the stated tolerance (per token, in nats)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from conftest import QA

from tunelab.errors import TunelabError

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make setup-gguf)"),
]

# Largest difference to transformers (fp32) measured here on the tiny model below, in nats per token:
# f32 GGUF 9.5e-5 (float summation order), f16 GGUF 4.5e-4 (f16 weights round the model itself).
# The tolerances leave room for other CPUs' kernels.
TOLERANCE = {"f32": 5e-4, "f16": 5e-3}


@pytest.fixture(scope="module")
def tiny_ggufs(tiny_model_dir, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The tiny model with its tied embeddings scaled up (logits far from flat, so a wrong row or
    token would show), saved, and converted by llama.cpp to f32 and f16 GGUF files."""
    import torch

    from tunelab.export.llama_cpp import convert_hf_to_gguf
    from tunelab.models.load import load_causal_lm, load_tokenizer

    out = tmp_path_factory.mktemp("scored")
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10.0)
    model.save_pretrained(out / "hf")
    load_tokenizer(tiny_model_dir).save_pretrained(out / "hf")
    return out / "hf", {t: convert_hf_to_gguf(out / "hf", out / f"tiny-{t}.gguf", t) for t in ("f32", "f16")}


def scoring_pairs(tokenizer) -> list[tuple[list[int], list[int]]]:
    """Reference answers (as the template renders them) and multiple-choice options sharing a prompt."""
    from tunelab.evaluate.likelihood import answer_pair, choice_pair

    pairs = [answer_pair(tokenizer, [{"role": "user", "content": q}], a) for q, a in QA[:6]]
    question = [{"role": "user", "content": "Which one is a colour?"}]
    pairs += [choice_pair(tokenizer, question, c) for c in (" Red", " Table", " Seven o'clock", " Blue")]
    return pairs


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_gguf_loglikelihoods_match_transformers(tiny_ggufs, outtype):
    from tunelab.models.gguf_likelihood import continuation_logprobs
    from tunelab.models.likelihood import continuation_logprobs as hf_logprobs
    from tunelab.models.llama_cpp import scoring_llama
    from tunelab.models.load import load_causal_lm, load_tokenizer

    hf_dir, ggufs = tiny_ggufs
    tokenizer = load_tokenizer(hf_dir)
    pairs = scoring_pairs(tokenizer)
    reference = hf_logprobs(load_causal_lm(hf_dir).eval(), tokenizer, pairs, batch_size=4)
    scored = continuation_logprobs(scoring_llama(ggufs[outtype], n_ctx=512, n_threads=1), pairs)
    assert [n for _, n in scored] == [n for _, n in reference]
    per_token = [abs(a - b) / n for (a, n), (b, _) in zip(scored, reference)]
    print(f"{outtype}: largest difference {max(per_token):.2e} nats per token over {len(pairs)} continuations")
    assert max(per_token) <= TOLERANCE[outtype], per_token
    # the scores are far from uniform, so a token or row off by one could not pass
    spread = [lp / n for lp, n in reference]
    assert max(spread) - min(spread) > 1.0, spread
    corpus = [math.exp(-sum(lp for lp, _ in r) / sum(n for _, n in r)) for r in (scored, reference)]
    assert corpus[0] == pytest.approx(corpus[1], rel=TOLERANCE[outtype] * 5)  # perplexity, as the evaluation reports it


def test_long_sequences_keep_their_last_tokens_as_transformers_does(tiny_ggufs):
    from tunelab.models.gguf_likelihood import continuation_logprobs
    from tunelab.models.likelihood import continuation_logprobs as hf_logprobs
    from tunelab.models.llama_cpp import scoring_llama
    from tunelab.models.load import load_causal_lm, load_tokenizer

    hf_dir, ggufs = tiny_ggufs
    tokenizer = load_tokenizer(hf_dir)
    prompt = tokenizer("word " * 80, add_special_tokens=False)["input_ids"]
    answer = tokenizer(" the answer is forty-two", add_special_tokens=False)["input_ids"]
    llm = scoring_llama(ggufs["f32"], n_ctx=64, n_threads=1)
    ((lp, n),) = continuation_logprobs(llm, [(prompt, answer)])
    ((expected, m),) = hf_logprobs(load_causal_lm(hf_dir).eval(), tokenizer, [((prompt + answer)[-64 : -len(answer)], answer)])
    assert n == m == len(answer) and abs(lp - expected) / n <= TOLERANCE["f32"]


def test_a_chat_llama_without_all_logits_is_a_clear_error(tiny_ggufs):
    from tunelab.models.gguf_likelihood import continuation_logprobs
    from tunelab.models.llama_cpp import open_llama

    llm = open_llama(tiny_ggufs[1]["f16"], n_ctx=128, n_threads=1)
    with pytest.raises(TunelabError, match="logits_all=True"):
        continuation_logprobs(llm, [([1, 2, 3], [4, 5])])


def test_pairs_from_the_gguf_template_equal_the_transformers_ones(tiny_ggufs):
    """With TemplateTokenizer, evaluate.likelihood's answer_pair/choice_pair build the same ids from
    the GGUF alone (its stored template and tokenizer) as from the transformers tokenizer."""
    from tunelab.models.gguf_likelihood import TemplateTokenizer
    from tunelab.models.llama_cpp import scoring_llama
    from tunelab.models.load import load_tokenizer

    hf_dir, ggufs = tiny_ggufs
    llm = scoring_llama(ggufs["f16"], n_ctx=256, n_threads=1)
    token = lambda i: llm.detokenize([i], special=True).decode()  # noqa: E731
    view = TemplateTokenizer(llm, llm.metadata["tokenizer.chat_template"], token(llm.token_bos()), token(llm.token_eos()))
    assert scoring_pairs(view) == scoring_pairs(load_tokenizer(hf_dir))


def test_a_gguf_is_scored_like_the_model_it_came_from(tiny_ggufs, tmp_path):
    """`tunelab eval` on a GGUF: perplexity of the references and multiple-choice picks through the
    ChatModel interface, equal to the transformers model's (perplexity was 'not available' before)."""
    from tunelab.config import EvalConfig
    from tunelab.evaluate.run import evaluate_models

    hf_dir, ggufs = tiny_ggufs
    examples = [
        {"id": f"q{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": "t"}
        for i, (q, a) in enumerate(QA[:5])
    ]
    cfg = EvalConfig(metrics=["perplexity"], bootstrap_samples=100, batch_size=2)
    result = evaluate_models([str(hf_dir), str(ggufs["f32"])], examples, cfg, tmp_path / "eval", names=["hf", "gguf"])
    hf, gguf = (result["models"][n]["metrics"]["perplexity"] for n in ("hf", "gguf"))
    assert gguf["mean"] is not None and "note" not in gguf
    assert math.log(gguf["corpus"]) == pytest.approx(math.log(hf["corpus"]), abs=TOLERANCE["f32"])
