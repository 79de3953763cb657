"""Model FLOPs per trained token, a measured matmul peak, and MFU (model FLOPs utilisation).

MFU = model FLOPs per token × tokens per second ÷ the peak matmul FLOP/s of this machine, with
the peak measured here (torch.matmul on the threads training uses) rather than taken from a
datasheet. "Model FLOPs" count what the training objective needs, whatever the implementation
does: an implementation that computes logits nobody needs, or recomputes activations (gradient
checkpointing), gets no credit for that work, so MFU compares implementations fairly.
"""

from __future__ import annotations

import functools
import time

import torch

from tunelab.data.render import IGNORE_INDEX


def parameter_counts(model) -> dict[str, int]:
    """The model's parameters by role.

    head: the output projection (the tied embedding too, when the input embedding shares it);
    lookup: embedding tables that are only indexed (no multiplications); trainable and frozen:
    every other parameter (a tied tensor is counted once). `*_trainable` are the trainable shares.
    """
    head_module = model.get_output_embeddings()
    head = {id(p) for p in head_module.parameters()} if head_module is not None else set()
    lookup = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()} - head
    counts = {"head": 0, "head_trainable": 0, "lookup": 0, "trainable": 0, "frozen": 0}
    for p in model.parameters():
        n = numel(p)
        if id(p) in head:
            counts["head"] += n
            counts["head_trainable"] += n if p.requires_grad else 0
        elif id(p) in lookup:
            counts["lookup"] += n
        else:
            counts["trainable" if p.requires_grad else "frozen"] += n
    return counts


def numel(p) -> int:
    """Elements of a parameter as the model uses it (a 4-bit weight stores two per byte; DeepSpeed ZeRO-3 shards it)."""
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None:
        return int(torch.Size(quant_state.shape).numel())
    return int(getattr(p, "ds_numel", 0) or p.numel())


def training_flops_per_token(model, logits_fraction: float = 1.0) -> float:
    """Model FLOPs of one training step per token: forward plus backward.

    The standard estimate (Kaplan et al. 2020; PaLM's MFU): a weight used in a matmul costs 2
    FLOPs per token forward (multiply and add), 2 in the backward pass for the gradient of the
    activations, and 2 more for its own gradient if it is trained. So a fully fine-tuned weight
    costs 6 per token, and a frozen base weight under LoRA 4 (its activation gradients are still
    needed to reach the adapters below it): LoRA costs 4·N_base + 6·N_lora, full fine-tuning 6·N.
    Embedding lookups cost nothing; the attention scores (2·layers·context·width per token,
    a few percent at these lengths) and norms are left out, so MFU is slightly understated.
    `logits_fraction` is the share of positions whose logits the loss needs: with the loss on
    answers only, the output projection is needed at the answer tokens alone.
    """
    c = parameter_counts(model)
    used = c["trainable"] + c["frozen"] + logits_fraction * c["head"]  # weights each token multiplies
    trained = c["trainable"] + logits_fraction * c["head_trainable"]
    return 2 * used + 2 * used + 2 * trained


def label_share(examples: list[dict]) -> float:
    """The share of tokens that carry a label (answer tokens under answer-only loss)."""
    labelled = sum(sum(1 for label in ex["labels"] if label != IGNORE_INDEX) for ex in examples)
    return labelled / max(1, sum(len(ex["input_ids"]) for ex in examples))


def matmul_peak_flops(dtype: torch.dtype = torch.bfloat16, seconds: float = 2.0) -> float:
    """FLOP/s of a matmul in `dtype` repeated for `seconds` on torch's current threads.

    The shape is a LoRA model's typical one on a CPU (4096 tokens × 576 by 576 × 1536, SmolLM2's MLP);
    on a GPU a larger square one, which a GPU needs to approach its peak.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m, k, n = (4096, 576, 1536) if device == "cpu" else (8192, 8192, 8192)
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def rate(window: float) -> float:
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < window:
            torch.matmul(a, b)
            calls += 1
            if device == "cuda" and calls % 10 == 0:
                sync()
        sync()
        return 2 * m * k * n * calls / (time.perf_counter() - start)

    rate(min(0.25, seconds / 4))  # warm-up: allocation, kernel choice, clocks
    # The best of several windows: a peak is what the machine can do, and a window in which
    # another thread or process took the core says nothing about that.
    return max(rate(seconds / 5) for _ in range(5))


@functools.cache
def process_peak_flops(dtype: torch.dtype, threads: int) -> float:
    """matmul_peak_flops measured once per process and thread count (the key), in half a second."""
    return matmul_peak_flops(dtype, seconds=0.5)


def peak_dtype() -> torch.dtype:
    """The fastest matmul type here: bf16 where the hardware has it (the machine's limit), else fp32."""
    # here: it brings transformers (~1.3 s over torch), which the FLOP counts alone (bench/train_throughput.py) do not need
    from tunelab.models.load import bf16_supported

    return torch.bfloat16 if bf16_supported() else torch.float32


def mfu_summary(model, examples: list[dict] | None, tokens_per_second: float, processes: int) -> dict:
    """The MFU fields of a training summary; `examples` None gives n/a (None).

    run.py passes None for DPO and ORPO, whose reference and paired forward passes this
    estimate does not describe, and for padded batches, whose tokens/s counts the padding:
    no figure rather than a wrong one. With several processes each measures its own peak (at
    the same time, so they share the machine as in training) and the peaks add up.
    """
    if examples is None:
        return {"model_flops_per_token": None, "matmul_peak_gflops": None, "matmul_peak_dtype": None, "mfu": None}
    flops = round(training_flops_per_token(model, logits_fraction=label_share(examples)))
    dtype = peak_dtype()
    peak = process_peak_flops(dtype, torch.get_num_threads()) * processes
    return {
        "model_flops_per_token": flops,
        "matmul_peak_gflops": peak / 1e9,  # unrounded, like mfu: a small MFU rounded to 4 decimals is off by 1%
        "matmul_peak_dtype": str(dtype).removeprefix("torch."),
        "mfu": flops * tokens_per_second / peak,
    }
