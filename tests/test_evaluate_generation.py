"""How `tunelab eval` generates: the backend and precision it picks, and the draft-and-check path
that must give exactly the float32 model's greedy answers (tunelab/evaluate/generation.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tunelab.config import EvalConfig, eval_config_from_options
from tunelab.errors import ConfigError, TunelabError
from tunelab.evaluate import generation
from tunelab.evaluate.generation import DraftStats, choose_generation, run_gguf, verified_generate
from tunelab.models.chat import load_chat_model
from tunelab.models.hf_chat import HFChatModel
from tunelab.models.interface import GenerationSettings

PROMPTS = ["Who are you?", "Name three colours, please, and say why you like them.", "2+2?", "Say hello in French.", "Tell me a story."]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]
GREEDY = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def fp32_chat(tiny_model_dir):
    return load_chat_model(tiny_model_dir)


class RandomDraft:
    """A draft that proposes random tokens: float32 rejects nearly all of them."""

    def __init__(self, chat: HFChatModel):
        self.tokenizer = chat.tokenizer
        self.model = self
        self.device = torch.device("cpu")  # as a transformers model has
        self.vocab = len(chat.tokenizer)
        self.rng = torch.Generator().manual_seed(0)

    def generate(self, input_ids, max_new_tokens, **kwargs):
        return torch.cat([input_ids, torch.randint(0, self.vocab, (input_ids.shape[0], max_new_tokens), generator=self.rng)], 1)


def as_draft(chat: HFChatModel, model) -> HFChatModel:
    return HFChatModel(model, chat.tokenizer, chat.name)


def test_a_wrong_draft_still_gives_the_fp32_answers(fp32_chat, monkeypatch):
    monkeypatch.setattr(generation, "MAX_ROUNDS", 50)
    expected = fp32_chat.generate(CONVERSATIONS, GREEDY, batch_size=len(CONVERSATIONS))
    stats = DraftStats()
    got = verified_generate(fp32_chat, RandomDraft(fp32_chat), CONVERSATIONS, GREEDY, stats)
    assert got == expected
    assert stats.corrected > 0 and stats.kept < stats.drafted and stats.finished_by_fp32 == 0


def test_after_the_last_round_fp32_finishes_the_answers(fp32_chat, monkeypatch):
    monkeypatch.setattr(generation, "MAX_ROUNDS", 1)
    expected = fp32_chat.generate(CONVERSATIONS, GREEDY, batch_size=len(CONVERSATIONS))
    stats = DraftStats()
    assert verified_generate(fp32_chat, RandomDraft(fp32_chat), CONVERSATIONS, GREEDY, stats) == expected
    assert stats.rounds == 1 and stats.finished_by_fp32 > 0


def test_an_exact_draft_is_kept_whole_in_one_round(fp32_chat):
    stats = DraftStats()
    same = as_draft(fp32_chat, copy.deepcopy(fp32_chat.model))
    got = verified_generate(fp32_chat, same, CONVERSATIONS, GREEDY, stats)
    assert got == fp32_chat.generate(CONVERSATIONS, GREEDY, batch_size=len(CONVERSATIONS))
    assert stats.rounds == 1 and stats.corrected == 0 and stats.kept == stats.drafted > 0


def test_a_bf16_draft_gives_the_fp32_answers(fp32_chat):
    stats = DraftStats()
    bf16 = as_draft(fp32_chat, copy.deepcopy(fp32_chat.model).to(torch.bfloat16))
    got = verified_generate(fp32_chat, bf16, CONVERSATIONS, GREEDY, stats)
    assert got == fp32_chat.generate(CONVERSATIONS, GREEDY, batch_size=2)


# ---------------------------------------------------------------- choosing
@pytest.mark.parametrize(
    ("precision", "has_bf16", "temperature", "label", "draft"),
    [
        ("fp32", True, 0.0, "transformers fp32", False),
        ("auto", True, 0.0, "bf16 drafts checked by fp32", True),
        ("auto", False, 0.0, "transformers fp32", False),  # no bf16 hardware: drafting would be slower
        ("auto", True, 0.7, "transformers fp32", False),  # sampling: nothing to check a draft against
        ("bf16", True, 0.0, "bf16 weights", False),
    ],
)
def test_the_plan_for_each_precision(fp32_chat, monkeypatch, precision, has_bf16, temperature, label, draft):
    monkeypatch.setattr(generation, "bf16_supported", lambda: has_bf16)
    plan = choose_generation(fp32_chat, "m", "auto", precision, GenerationSettings(temperature=temperature))
    assert label in plan.label
    assert (plan.draft is not None) == draft
    if precision == "bf16":
        assert plan.chat.model.dtype == torch.bfloat16 and fp32_chat.model.dtype == torch.float32
    else:
        assert plan.chat is fp32_chat


def test_gguf_without_an_export_is_a_clear_error(fp32_chat, tmp_path):
    with pytest.raises(TunelabError, match="no exported GGUF"):
        choose_generation(fp32_chat, str(tmp_path), "gguf", "auto", GREEDY)


def test_the_run_gguf_closest_to_the_trained_weights_is_chosen(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "tunelab_model.json").write_text(json.dumps({"base_model": "x"}))
    assert run_gguf(run) is None
    gguf = run / "export" / "gguf"
    gguf.mkdir(parents=True)
    for name in ("run-q4_k_m.gguf", "run-q8_0.gguf"):
        (gguf / name).write_bytes(b"")
    assert run_gguf(run) == gguf / "run-q8_0.gguf"
    (gguf / "run-f16.gguf").write_bytes(b"")
    assert run_gguf(run) == gguf / "run-f16.gguf"
    assert run_gguf(run / "model") == gguf / "run-f16.gguf"
    assert run_gguf(tmp_path / "not-a-run") is None


def test_the_recipe_options():
    # fp32 by default: `auto` kept fp32's answers but ran at 0.32x its speed at batch 8 (bench/eval_scoring.py, idle)
    assert EvalConfig().generation_backend == "auto" and EvalConfig().generation_precision == "fp32"
    cfg = eval_config_from_options({}, ["eval.generation_precision=fp32", "generation_backend=gguf"])
    assert (cfg.generation_precision, cfg.generation_backend) == ("fp32", "gguf")
    with pytest.raises(ConfigError, match="generation_precision"):
        eval_config_from_options({}, ["generation_precision=fp16"])


def test_eval_json_says_what_generated(tiny_model_dir, tmp_path):
    from tunelab.evaluate.run import evaluate_models

    examples = [
        {"id": str(i), "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "An answer."}]}
        for i, p in enumerate(PROMPTS)
    ]
    results = {}
    for precision in ("fp32", "auto"):
        cfg = EvalConfig(max_new_tokens=8, batch_size=2, bootstrap_samples=50, metrics=["bleu"], generation_precision=precision)
        result = evaluate_models([str(tiny_model_dir)], examples, cfg, tmp_path / precision)
        results[precision] = result
        preds = [json.loads(line) for line in (Path(tmp_path / precision) / "predictions.jsonl").read_text().splitlines()]
        results[precision + "-answers"] = [next(iter(p["predictions"].values())) for p in preds]
    fp32_gen = next(iter(results["fp32"]["models"].values()))["generation"]
    assert fp32_gen["backend"] == "transformers fp32" and "draft_check" not in fp32_gen
    assert results["fp32"]["generation_settings"]["precision"] == "fp32"
    if generation.bf16_supported():
        auto_gen = next(iter(results["auto"]["models"].values()))["generation"]
        assert "checked by fp32" in auto_gen["backend"] and auto_gen["draft_check"]["rounds"] >= 1
    assert results["auto-answers"] == results["fp32-answers"]
