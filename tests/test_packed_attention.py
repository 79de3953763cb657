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
    from tunelab.train import attention
    from tunelab.train.run import attention_implementation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_implementation(packing=True) == ATTENTION
    assert attention_implementation(packing=True, per_example=False) == "sdpa"  # the ablation's masked row
    assert attention_implementation(packing=True, compiled_backward=False) == attention.ATTENTION_FLASH_BACKWARD
    assert attention_implementation(packing=False) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attention_implementation(packing=True) is None


def sdpa_grads(q, k, v, grad_out):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("length", [1, 5, 37])
def test_the_attention_backward_gives_sdpas_gradients(length):
    """attention_backward (eager here, compiled in training) from the forward's log-sum-exp, in fp32 against SDPA's own."""
    from tunelab.train.attention import attention_backward

    g = torch.Generator().manual_seed(length)
    q, k, v, grad_out = (torch.randn(1, 3, length, 8, generator=g) for _ in range(4))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=8**-0.5)[:2]
    ref_out, *ref_grads = sdpa_grads(q, k, v, grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    for name, grad, ref in zip("qkv", attention_backward(q, k, v, out, lse, grad_out, 8**-0.5), ref_grads):
        torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.skipif(not __import__("tunelab.cpu", fromlist=["x"]).has_cpp_compiler(), reason="torch.compile needs a C++ compiler")
def test_training_under_bf16_takes_the_compiled_backward_with_the_kernels_gradients(monkeypatch):
    """A packed row under bf16 autocast: the compiled backward runs, and every weight's gradient is the flash kernel's
    to bf16 rounding."""
    from tunelab.train import attention

    calls = []
    compiled = attention.compiled_attention_backward()
    monkeypatch.setattr(attention, "compiled_attention_backward", lambda: lambda *a: calls.append(1) or compiled(*a))
    torch.manual_seed(0)
    model = tiny_model("llama").float()
    batch = packed_row([7, 3, 12, 1, 9])
    grads = {}
    for implementation in (attention.ATTENTION_FLASH_BACKWARD, ATTENTION):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grads[implementation] = logits_and_grads(model, implementation, batch)[1]
    assert len(calls) == 2 * 5  # two layers, five examples
    for name, grad in grads[ATTENTION].items():
        torch.testing.assert_close(grad, grads[attention.ATTENTION_FLASH_BACKWARD][name], atol=2e-2, rtol=2e-2, msg=name)


def test_lora_layers_under_autocast_give_the_same_numbers_without_peft_casting_their_inputs():
    from peft import LoraConfig, get_peft_model

    from tunelab.train.lora import skip_input_casts

    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama").float(), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    batch = packed_row([7, 3, 12])
    results = []
    for skip in (False, True):
        if skip:
            skip_input_casts(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(logits_and_grads(model, "sdpa", batch))
    assert torch.equal(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        assert torch.equal(grad, results[1][1][name]), name


def test_the_compiled_backward_is_for_bf16_small_heads_and_dropout_free_steps():
    from tunelab.cpu import has_cpp_compiler
    from tunelab.train.attention import uses_compiled_backward

    def q(head_dim, dtype=torch.bfloat16, length=4):
        return torch.zeros(1, 2, length, head_dim, dtype=dtype, requires_grad=True)

    assert uses_compiled_backward(q(64), dropout=0.0) == has_cpp_compiler()
    assert not uses_compiled_backward(q(256), dropout=0.0)  # Gemma-3's heads: the kernel's backward is as fast there
    assert not uses_compiled_backward(q(64, torch.float32), dropout=0.0)
    assert not uses_compiled_backward(q(64), dropout=0.1)
    assert not uses_compiled_backward(q(64, length=4096), dropout=0.0)  # 2 heads × 4096² scores: over MAX_SCORES
    with torch.no_grad():
        assert not uses_compiled_backward(q(64), dropout=0.0)
