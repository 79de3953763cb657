"""Model FLOPs per token: the counts match a tiny model's parameters, for LoRA and full fine-tuning; MFU in the summary."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.train.flops import label_share, matmul_peak_flops, mfu_summary, parameter_counts, training_flops_per_token

H, MLP, LAYERS, VOCAB, KV = 64, 128, 2, 100, 32  # hidden, MLP width, layers, vocabulary, key/value width (2 of 4 heads of 16)


def tiny(tied: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


# by hand, from the config: each layer's q, k, v, o, gate, up, down matrices and two norms; the final norm
LAYER_MATMULS = H * H + H * KV + H * KV + H * H + 3 * H * MLP
BODY = LAYERS * (LAYER_MATMULS + 2 * H) + H
HEAD = VOCAB * H


def test_full_fine_tuning_costs_six_per_weight():
    model = tiny(tied=True)
    assert parameter_counts(model) == {"head": HEAD, "head_trainable": HEAD, "lookup": 0, "trainable": BODY, "frozen": 0}
    assert BODY + HEAD == sum(p.numel() for p in model.parameters())
    assert training_flops_per_token(model) == 6 * (BODY + HEAD)
    untied = tiny(tied=False)  # the input embedding is a lookup: no FLOPs
    assert parameter_counts(untied)["lookup"] == VOCAB * H
    assert training_flops_per_token(untied) == 6 * (BODY + HEAD)


def test_lora_costs_four_per_frozen_weight_and_six_per_adapter_weight():
    r = 4
    model = get_peft_model(tiny(tied=True), LoraConfig(r=r, target_modules="all-linear"))
    adapters = LAYERS * r * ((H + H) + (H + KV) + (H + KV) + (H + H) + 2 * (H + MLP) + (MLP + H))  # r × (in + out) per matrix
    assert adapters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = parameter_counts(model)
    assert counts == {"head": HEAD, "head_trainable": 0, "lookup": 0, "trainable": adapters, "frozen": BODY}
    assert training_flops_per_token(model) == 4 * (BODY + HEAD) + 6 * adapters
    # loss on answers only: the output projection is needed at that share of the positions
    assert training_flops_per_token(model, logits_fraction=0.25) == 4 * (BODY + HEAD / 4) + 6 * adapters


def test_label_share_and_mfu_fields():
    examples = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}, {"input_ids": [5, 6], "labels": [-100, 6]}]
    assert label_share(examples) == pytest.approx(0.5)
    model = get_peft_model(tiny(tied=True), LoraConfig(r=4, target_modules="all-linear"))
    fields = mfu_summary(model, examples, tokens_per_second=1000.0, processes=1)
    assert fields["model_flops_per_token"] == round(training_flops_per_token(model, 0.5))
    assert fields["matmul_peak_gflops"] > 0 and fields["matmul_peak_dtype"] in ("bfloat16", "float32")
    expected = fields["model_flops_per_token"] * 1000.0 / (fields["matmul_peak_gflops"] * 1e9)
    assert fields["mfu"] == pytest.approx(expected, rel=0.01, abs=1e-4)
    assert mfu_summary(model, None, 1000.0, 1) == {
        "model_flops_per_token": None,
        "matmul_peak_gflops": None,
        "matmul_peak_dtype": None,
        "mfu": None,
    }


def test_matmul_peak_is_a_rate():
    assert matmul_peak_flops(torch.float32, seconds=0.05) > 1e8  # any CPU does more than 0.1 GFLOP/s
