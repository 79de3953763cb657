"""The answer-token loss in chunks, so a large vocabulary's logits never exist all at once.

The packed collator already asks for logits only at answer positions (`logits_to_keep`). With
Gemma-3's 262,144-token vocabulary that is still 1.5 GB per fp32 copy for a batch of 8 Alpaca
examples, and the loss keeps several copies (bf16 logits, their fp32 upcast, the softmax) for the
backward pass. On a CPU, and elsewhere where one step's answer logits would pass `LOGITS_BUDGET`
elements, the training forward instead takes the decoder's hidden states at those positions and computes the output
projection and the cross-entropy a chunk of positions at a time, writing each chunk's gradient
with respect to the hidden states during the forward (the softmax minus the one-hot label, times
the projection), so only one chunk's logits are alive and nothing is recomputed. It also makes one
pass for the log-normaliser and turns the logits into the softmax in place, where the unchunked
path writes log-softmax and its gradient as further copies: on the AMX Xeon this cut a SmolLM2
LoRA step by about a sixth (docs/training.md). The output
projection is frozen in LoRA, so its own gradient is not needed; a trainable one (full
fine-tuning, or LoRA on it) keeps transformers' path.

On a CPU with a C++ compiler, each chunk's loss, softmax and gradient are one function compiled by
torch.compile (`softmax_minus_onehot`), which reads the chunk's bf16 logits a few times and writes no
fp32 copy; the eager ops it replaces cost about as much as the chunk's two matmuls (docs/training.md,
item 5). Without a compiler, on a GPU, or inside a model compiled whole, the eager ops run.

The loss and gradients equal transformers' (tests/test_answer_loss.py); the same arithmetic as
`fixed_cross_entropy`: a sum over answer tokens divided by the Trainer's `num_items_in_batch`, or
a mean without it.
"""

from __future__ import annotations

import functools
import types

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from tunelab.cpu import has_cpp_compiler
from tunelab.data.render import IGNORE_INDEX

LOGITS_BUDGET = 2**27  # logits elements (512 MB in fp32) one step may hold at once; above it the loss is chunked
# On a CPU the loss is always chunked, in chunks this size (logits elements, 64 MB in fp32): a chunk stays in the
# caches and the allocator's heap, where whole-batch logits cost page faults and several passes over memory
CPU_CHUNK = 2**24
# Where the chunk's softmax and gradient are one compiled kernel (`fused_on_cpu`), a chunk holds at least this many
# positions: the output projection's two matmuls of a chunk ran at 242-271 GFLOP/s with 64 positions of Gemma-3's
# 262,144-token vocabulary (CPU_CHUNK's size) against 345-353 with 256 (AVX512-BF16 EPYC, 2 threads), and the
# compiled kernel writes no fp32 copy of the chunk's logits to make a larger chunk cost memory
FUSED_MIN_POSITIONS = 256


def softmax_minus_onehot(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the chunk's summed cross-entropy, its gradient with respect to the logits: softmax minus one-hot, zero where
    the label is ignored, in the logits' dtype), computed in fp32. Written for torch.compile, which makes it a few
    passes over the chunk's logits with no fp32 copy; run eagerly it would hold several (`eager_loss_and_grad`)."""
    x = logits.float()
    keep = labels != IGNORE_INDEX
    normaliser = torch.logsumexp(x, dim=-1)
    picked = x.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    total = torch.where(keep, normaliser - picked, 0.0).sum()
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == labels[:, None]
    probs = torch.where(keep[:, None], torch.exp(x - normaliser[:, None]) - onehot.float(), 0.0)
    return total, probs.to(logits.dtype)


@functools.cache
def compiled_softmax_minus_onehot():
    return torch.compile(softmax_minus_onehot, dynamic=True)  # one kernel for every chunk length


def eager_loss_and_grad(logits: torch.Tensor, labels: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What `softmax_minus_onehot` gives (the gradient in fp32, or None without `need_grad`), by eager ops on one fp32
    copy: one pass for the log-normaliser, then the softmax in place (cross_entropy and softmax would each write
    another copy of the chunk's logits)."""
    logits = logits.float()
    keep = labels != IGNORE_INDEX
    normaliser = torch.logsumexp(logits, dim=-1)
    total = (normaliser[keep] - logits[keep, labels[keep]]).sum()
    if not need_grad:
        return total, None
    probs = logits.sub_(normaliser[:, None]).exp_()
    probs[keep, labels[keep]] -= 1
    probs[~keep] = 0
    return total, probs


class ChunkedAnswerLoss(torch.autograd.Function):
    """Cross-entropy of `head(hidden)` against `labels`, chunk by chunk, its gradient written in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, divisor, chunk, compute_dtype, fused):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        w = weight.to(compute_dtype)
        for start in range(0, len(labels), chunk):
            h, y = hidden[start : start + chunk], labels[start : start + chunk]
            logits = h.to(compute_dtype) @ w.T
            if fused and grad is not None:
                with torch.autocast(hidden.device.type, enabled=False):  # the kernel's dtypes are its own
                    part, probs = compiled_softmax_minus_onehot()(logits, y)
            else:
                part, probs = eager_loss_and_grad(logits, y, need_grad=grad is not None)
            total += part
            if grad is not None:
                grad[start : start + chunk] = (probs.to(compute_dtype) @ w).to(hidden.dtype)
        ctx.save_for_backward(grad, divisor)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grad, divisor = ctx.saved_tensors
        return grad * (grad_output / divisor).to(grad.dtype), None, None, None, None, None, None


def fuses(device: torch.device, fused_on_cpu: bool) -> bool:
    """Whether a chunk's softmax and gradient run as the compiled kernel: on a CPU with a C++ compiler to build it,
    outside a model compiled whole (which traces the eager ops itself), unless `fused_on_cpu` is off."""
    return fused_on_cpu and device.type == "cpu" and has_cpp_compiler() and not torch.compiler.is_compiling()


def chunked_loss(hidden, head: torch.nn.Linear, labels, num_items_in_batch=None, fused_on_cpu: bool = True):
    """The mean (or sum / num_items_in_batch) answer-token loss, as transformers' `fixed_cross_entropy` gives it."""
    if num_items_in_batch is None:
        divisor = (labels != IGNORE_INDEX).sum().clamp(min=1)
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device)
    divisor = divisor.to(torch.float32)
    autocast = torch.is_autocast_enabled(hidden.device.type)
    compute_dtype = torch.get_autocast_dtype(hidden.device.type) if autocast else head.weight.dtype
    fused = fuses(hidden.device, fused_on_cpu)
    chunk = max(1, min(CPU_CHUNK if hidden.device.type == "cpu" else LOGITS_BUDGET, LOGITS_BUDGET) // head.out_features)
    chunk = max(chunk, FUSED_MIN_POSITIONS) if fused else chunk
    return ChunkedAnswerLoss.apply(hidden, head.weight, labels, divisor, chunk, compute_dtype, fused)


def use_chunked_answer_loss(model, chunk_on_cpu: bool = True, fused_on_cpu: bool = True) -> None:
    """Route `model`'s training forward through `chunked_loss` on a CPU, and elsewhere when a batch's answer
    logits would pass the budget.

    `model` is the causal LM itself (under PEFT, `peft_model.get_base_model()`); its forward is
    replaced on this instance only. Batches without `shift_labels` (padded batches, DPO, generation)
    and models whose output projection trains or has final logit soft-capping keep their own forward.
    `chunk_on_cpu=False` chunks on a CPU too only above the budget (to measure what chunking buys there);
    `fused_on_cpu=False` keeps each chunk's softmax and gradient in eager ops there (`fuses`).
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.requires_grad or head.bias is not None:
        return
    if getattr(model.config, "final_logit_softcapping", None) is not None:
        return
    original = model.forward

    def forward(self, *args, **kwargs):
        keep, shift_labels = kwargs.get("logits_to_keep"), kwargs.get("shift_labels")
        positions = keep.numel() if torch.is_tensor(keep) else 0
        always = chunk_on_cpu and head.weight.device.type == "cpu"
        if args or shift_labels is None or (not always and positions * head.out_features <= LOGITS_BUDGET):
            return original(*args, **kwargs)
        inputs = {k: v for k, v in kwargs.items() if k not in ("labels", "logits_to_keep", "shift_labels", "num_items_in_batch")}
        hidden = self.get_decoder()(**inputs).last_hidden_state
        loss = chunked_loss(hidden[0, keep], head, shift_labels[0], kwargs.get("num_items_in_batch"), fused_on_cpu=fused_on_cpu)
        return CausalLMOutputWithPast(loss=loss)

    model.forward = types.MethodType(forward, model)
