"""Attention for padding-free packed rows: each example attends only within itself, at its own cost.

A packed row holds several examples one after another, with `position_ids` restarting at 0 for
each. transformers' SDPA path expresses "attend only within your example" as a block-diagonal
mask over the whole row, and the CPU kernel then computes every query against every key of the
row: for 8 examples of ~220 tokens that is 8x the attention work the examples need, and attention
becomes about a third of the forward pass of a 135M model. `packed_sdpa` finds the examples'
boundaries from `position_ids` and runs causal SDPA on each example's own block instead, which
computes exactly the same numbers (a test checks it against the masked path).

It is registered under the name `ATTENTION` with transformers' attention and mask interfaces
(the SDPA mask, so any call it does not handle gets the standard path with the right mask):
training sets `model.set_attn_implementation(ATTENTION)` when batches are packed and the model
trains on a CPU. On a GPU the many small kernel calls cost more than the masked-out work they
save: 12 steps of a SmolLM2-135M-shaped model on an H200 ran at 614 tokens/s with this function and
1,828 with transformers' SDPA (docs/training.md), so GPUs keep transformers' path. The choice is not
written into a saved config.json, so a trained model loads with transformers' default elsewhere.

The backward of each example's attention: torch's CPU flash-attention kernel runs its forward well
(AMX matmuls) and its backward slowly, 6x its forward where the FLOPs are 2.5x (one layer of 8 Alpaca
examples on the AMX Xeon: 7 ms forward, 46 ms backward). Under bf16 autocast with a C++ compiler
(`tunelab.cpu.has_cpp_compiler`), `CausalAttention` keeps the kernel's forward and computes the
backward from its saved log-sum-exp with bf16 matmuls and the softmax gradient in fp32, fused by
torch.compile into one kernel (27 ms for that layer). It is compiled once per process, for any
length, in about 12 s (5 s with inductor's cache on disk warm). The other registered name,
`ATTENTION_FLASH_BACKWARD`, keeps the kernel's own backward (`StepChoices.compiled_attention_backward`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tunelab.cpu import has_cpp_compiler

ATTENTION = "tunelab_packed_sdpa"
ATTENTION_FLASH_BACKWARD = (
    "tunelab_packed_sdpa_kernel_backward"  # not "flash": transformers reads any such name as a flash-attention kernel
)
# the compiled backward holds an example's (heads x length x length) scores in fp32 a few times over: above this many
# scores (64 MiB each copy; SmolLM2's 9 heads at 1,365 tokens) an example takes the flash kernel's backward instead
MAX_SCORES = 2**24
# heads of this size or smaller: SmolLM2's 64 ran 1.08x (bench/train_throughput.py); Gemma-3-270m's 256 ran the same
# speed either way after paying the compile (docs/training.md), so larger heads keep the kernel's backward
MAX_HEAD_DIM = 64


def example_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each example in a packed row: a new example starts wherever the position is 0."""
    starts = torch.nonzero(position_ids == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], len(position_ids)]))


def window_mask(length: int, window: int, device) -> torch.Tensor:
    """Causal and within `window` positions (Gemma's local layers: distance < window), as SDPA's boolean mask."""
    idx = torch.arange(length, device=device)
    distance = idx[:, None] - idx[None, :]
    return (distance >= 0) & (distance < window)


def attention_backward(q, k, v, out, lse, grad_out, scale: float):
    """Gradients of causal softmax(q k^T * scale) v with respect to q, k and v, from the forward's output and log-sum-exp:
    the scores recomputed with a bf16 matmul, the probabilities and the softmax gradient in fp32, bf16 matmuls after."""
    n = q.shape[2]
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    causal = torch.arange(n, device=q.device).view(-1, 1) >= torch.arange(n, device=q.device).view(1, -1)
    probs = torch.where(causal, torch.exp(scores - lse.unsqueeze(-1)), 0.0)
    grad_v = torch.matmul(probs.to(q.dtype).transpose(-1, -2), grad_out)
    grad_probs = torch.matmul(grad_out, v.transpose(-1, -2)).float()
    row_dot = (grad_out.float() * out.float()).sum(-1, keepdim=True)
    grad_scores = (probs * (grad_probs - row_dot) * scale).to(q.dtype)
    return torch.matmul(grad_scores, k), torch.matmul(grad_scores.transpose(-1, -2), q), grad_v


@functools.cache
def compiled_attention_backward():
    return torch.compile(attention_backward, dynamic=True)  # one kernel for every example length


class CausalAttention(torch.autograd.Function):
    """Causal attention of one example: the CPU flash kernel's forward, `attention_backward` compiled for the backward."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)[:2]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # contiguous copies: an example's q, k and v are views into the row at an offset, 0 for the first example
        # only, and the compiler specializes on an offset of 0: without them it compiles the kernel twice
        tensors = (t.contiguous() for t in (*ctx.saved_tensors, grad_out))
        return *compiled_attention_backward()(*tensors, ctx.scale), None


def backward_compiles(head_dim: int, dtype: torch.dtype) -> bool:
    """What a model decides of `uses_compiled_backward`: bf16, heads where it pays, a compiler to build the kernel."""
    return dtype == torch.bfloat16 and head_dim <= MAX_HEAD_DIM and has_cpp_compiler()


def uses_compiled_backward(q: torch.Tensor, dropout: float) -> bool:
    """bf16 on a CPU in an eager step that keeps gradients, with a compiler to build the kernel, heads where it pays
    and scores that fit."""
    return (
        q.device.type == "cpu"
        and q.requires_grad
        and torch.is_grad_enabled()
        and not dropout
        and not torch.compiler.is_compiling()  # a compiled model keeps the kernel's backward: not measured inside a graph
        and q.shape[1] * q.shape[2] ** 2 <= MAX_SCORES
        and backward_compiles(q.shape[-1], q.dtype)
    )


def causal_attention(q, k, v, dropout: float, scale: float | None, compiled_backward: bool) -> torch.Tensor:
    """Causal SDPA of one example, in the dtype autocast gives SDPA; its backward compiled where that pays."""
    if torch.is_autocast_enabled(q.device.type):  # what autocast does to SDPA's inputs, done here for the raw kernel
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if compiled_backward and uses_compiled_backward(q, dropout):
        return CausalAttention.apply(q, k, v, scale if scale is not None else q.shape[-1] ** -0.5)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale)


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, *, compiled_backward=True, **kwargs):
    """SDPA per example of one packed row; anything else (batches, a KV cache, no positions) takes transformers' path."""
    position_ids = kwargs.get("position_ids")
    packed_row = position_ids is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2] == position_ids.shape[-1]
    if not packed_row or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = (repeat_kv(key, groups), repeat_kv(value, groups)) if groups > 1 else (key, value)
    window = getattr(module, "sliding_window", None)
    # split, not slice: the backward of a slice adds its gradient into a zeroed tensor as long as the whole row,
    # once per example (quadratic in examples per row); split's backward is one cat
    lengths = [end - start for start, end in example_bounds(position_ids.reshape(-1))]
    outputs = []
    for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2)):
        length = q.shape[2]
        if window is not None and length > window:
            mask = window_mask(length, window, query.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        else:
            out = causal_attention(q, k, v, dropout, scaling, compiled_backward)
        outputs.append(out)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, packed_sdpa)
AttentionInterface.register(ATTENTION_FLASH_BACKWARD, functools.partial(packed_sdpa, compiled_backward=False))
for name in (ATTENTION, ATTENTION_FLASH_BACKWARD):
    AttentionMaskInterface.register(name, sdpa_mask)
