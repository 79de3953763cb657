"""Batch builders for training.

`PackedCollator` (the default) concatenates the examples of a batch into one row with no
padding at all; `position_ids` restart at 0 for every example, which transformers turns into
a block-diagonal causal mask, so attention never crosses example boundaries. It also asks
the model for logits only at positions that have a label (`logits_to_keep` + `shift_labels`):
with answer-only loss, most prompt positions need no vocabulary projection at all.

`PaddedCollator` pads to the longest example of the batch (packing off).
"""

from __future__ import annotations

import torch

from tunelab.data.render import IGNORE_INDEX


class PackedCollator:
    def __init__(self, logits_only_at_labels: bool = True):
        self.logits_only_at_labels = logits_only_at_labels

    def __call__(self, examples: list[dict]) -> dict:
        input_ids, labels, position_ids = [], [], []
        for ex in examples:
            n = len(ex["input_ids"])
            input_ids += ex["input_ids"]
            # the first token of each example is never predicted from the previous example
            labels += [IGNORE_INDEX] + list(ex["labels"][1:])
            position_ids += range(n)
        batch = {
            "input_ids": torch.tensor([input_ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([position_ids]),
            "use_cache": False,  # a KV cache would disable the packed-sequence mask
        }
        if self.logits_only_at_labels:
            shifted = batch["labels"][0, 1:]
            keep = torch.nonzero(shifted != IGNORE_INDEX).flatten()
            if len(keep) == 0:  # nothing to learn in this batch: keep one position so shapes stay valid
                keep = torch.tensor([0])
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = shifted[keep].unsqueeze(0)
        return batch


class PaddedCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        longest = max(len(ex["input_ids"]) for ex in examples)
        ids = torch.full((len(examples), longest), self.pad_token_id)
        labels = torch.full((len(examples), longest), IGNORE_INDEX)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, ex in enumerate(examples):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"])
            labels[i, :n] = torch.tensor(ex["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
