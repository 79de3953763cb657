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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "tunelab_packed_sdpa"


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


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
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
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling)
        outputs.append(out)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, packed_sdpa)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
