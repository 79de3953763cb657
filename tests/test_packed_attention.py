"""Per-example attention on packed rows gives the numbers of transformers' block-diagonal mask.

Tiny random Llama (grouped-query attention), Qwen2 and Gemma-3 (sliding-window layers, with a window
shorter than an example so the windowed branch runs): logits and the gradient of every weight must
match the standard SDPA path on the same packed row, and batches that are not one packed row
(padding, generation with a KV cache) must take the standard path unchanged.
"""

from __future__ import annotations

import pytest
import torch

from tunelab.train.attention import ATTENTION, example_bounds


def tiny_model(arch: str):
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**common))
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**common))
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        **common, head_dim=8, query_pre_attn_scalar=8, sliding_window=5, layer_types=["sliding_attention", "full_attention"]
    )
    return Gemma3ForCausalLM(config)


def packed_row(lengths: list[int], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (1, sum(lengths)), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return {"input_ids": ids, "position_ids": positions, "labels": ids.clone(), "use_cache": False}


def logits_and_grads(model, implementation: str, batch: dict):
    model.set_attn_implementation(implementation)
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_packed_rows_match_the_block_diagonal_mask(arch):
    torch.manual_seed(0)
    model = tiny_model(arch).float()
    batch = packed_row([7, 3, 12, 1, 9])
    ref_logits, ref_grads = logits_and_grads(model, "sdpa", batch)
    logits, grads = logits_and_grads(model, ATTENTION, batch)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_attention_crosses_no_example_boundary():
    """The second example's logits do not depend on the first example's tokens."""
    model = tiny_model("llama").float().eval()
    model.set_attn_implementation(ATTENTION)
    a, b = packed_row([6, 5], seed=1), packed_row([6, 5], seed=2)
    b["input_ids"][0, 6:] = a["input_ids"][0, 6:]  # same second example, different first one
    with torch.no_grad():
        la, lb = model(**a).logits, model(**b).logits
    torch.testing.assert_close(la[0, 6:], lb[0, 6:])
    assert not torch.allclose(la[0, :6], lb[0, :6])


def test_padded_batches_and_generation_take_the_standard_path():
    torch.manual_seed(0)
    model = tiny_model("llama").float().eval()
    ids = torch.randint(0, 128, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    outputs = {}
    for implementation in ("sdpa", ATTENTION):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            generated = model.generate(ids[1:], max_new_tokens=5, do_sample=False)
        outputs[implementation] = (logits, generated)
    torch.testing.assert_close(outputs[ATTENTION][0] * mask[..., None], outputs["sdpa"][0] * mask[..., None])
    assert torch.equal(outputs[ATTENTION][1], outputs["sdpa"][1])


def test_example_bounds():
    assert example_bounds(torch.tensor([0, 1, 2, 0, 1, 0])) == [(0, 3), (3, 5), (5, 6)]
    assert example_bounds(torch.tensor([3, 4, 0, 1])) == [(0, 2), (2, 4)]  # a row that starts mid-example


def test_packed_training_uses_it_on_a_cpu_only(monkeypatch):
    """On CUDA one masked SDPA call per layer beat a call per example 3x (H200): GPUs keep transformers' path."""
    from tunelab.train.run import attention_implementation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_implementation(packing=True) == ATTENTION
    assert attention_implementation(packing=True, per_example=False) == "sdpa"  # the ablation's masked row
    assert attention_implementation(packing=False) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attention_implementation(packing=True) is None
