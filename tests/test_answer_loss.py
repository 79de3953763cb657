"""The chunked answer-token loss (tunelab/train/answer_loss.py) gives transformers' loss and gradients.

Tiny random Llama and Gemma-3 with LoRA on every linear layer, on one packed row of the kind
PackedCollator builds (logits at answer positions only). The budget is set so low that the loss
runs in chunks of 3 positions; loss and every LoRA gradient must equal the unpatched model's in
fp32, and under bf16 autocast be as close to fp32's as the unpatched model's bf16 gradients are,
with and without the Trainer's `num_items_in_batch`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_packed_attention import tiny_model

from tunelab.data.render import IGNORE_INDEX
from tunelab.train import answer_loss
from tunelab.train.answer_loss import chunked_loss
from tunelab.train.collate import PackedCollator


def packed_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    examples = []
    for prompt, answer in [(5, 4), (3, 6), (7, 2)]:
        ids = torch.randint(0, 128, (prompt + answer,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return PackedCollator()(examples)


def lora(arch: str):
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(arch).float(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    return model


def loss_and_grads(model, batch: dict, autocast: bool, **extra):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch, **extra).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("num_items", [None, 40])
@pytest.mark.parametrize("fused", [True, False], ids=["compiled-kernel", "eager"])
def test_chunked_loss_equals_transformers(arch, num_items, fused, monkeypatch):
    reference = lora(arch)
    chunked = copy.deepcopy(reference)
    monkeypatch.setattr(answer_loss, "LOGITS_BUDGET", 3 * 128)  # chunks of 3 answer positions of a 128-token vocabulary
    monkeypatch.setattr(answer_loss, "FUSED_MIN_POSITIONS", 1)  # the compiled kernel's chunks too
    answer_loss.use_chunked_answer_loss(chunked.get_base_model(), chunk_on_cpu=False, fused_on_cpu=fused)
    batch = packed_batch()
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    assert chunked(**batch).logits is None  # it does take the chunked path
    ref_loss, ref_grads = loss_and_grads(reference, batch, False, **extra)
    loss, grads = loss_and_grads(chunked, batch, False, **extra)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)

    # under bf16 autocast both round differently; the chunked gradients must be as close to fp32's as transformers' are
    bf16_ref_loss, bf16_ref_grads = loss_and_grads(reference, batch, True, **extra)
    bf16_loss, bf16_grads = loss_and_grads(chunked, batch, True, **extra)
    torch.testing.assert_close(bf16_loss, bf16_ref_loss, atol=1e-4, rtol=1e-4)

    def error(g: dict) -> float:
        return max(float((g[n] - ref_grads[n]).norm() / ref_grads[n].norm()) for n in ref_grads)

    assert error(bf16_grads) <= 1.1 * error(bf16_ref_grads), (error(bf16_grads), error(bf16_ref_grads))


def test_on_a_cpu_every_packed_batch_is_chunked_in_cache_sized_chunks(monkeypatch):
    reference = lora("llama")
    chunked = copy.deepcopy(reference)
    monkeypatch.setattr(answer_loss, "CPU_CHUNK", 3 * 128)  # chunks of 3 positions, far under LOGITS_BUDGET
    monkeypatch.setattr(answer_loss, "FUSED_MIN_POSITIONS", 1)
    answer_loss.use_chunked_answer_loss(chunked.get_base_model())
    batch = packed_batch()
    assert chunked(**batch).logits is None
    ref_loss, ref_grads = loss_and_grads(reference, batch, False)
    loss, grads = loss_and_grads(chunked, batch, False)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_kernel_gives_the_eager_loss_and_gradient(dtype):
    """`softmax_minus_onehot` compiled against `eager_loss_and_grad`, with an ignored label and a last chunk of one
    position: the same summed loss, and the same softmax-minus-one-hot to the logits' rounding."""
    if not answer_loss.fuses(torch.device("cpu"), True):
        pytest.skip("no C++ compiler: training takes the eager ops, tested everywhere else in this file")
    g = torch.Generator().manual_seed(0)
    for rows in (7, 1):
        logits = (torch.randn(rows, 300, generator=g) * 4).to(dtype)
        labels = torch.randint(0, 300, (rows,), generator=g)
        labels[0] = IGNORE_INDEX
        total, grad = answer_loss.compiled_softmax_minus_onehot()(logits, labels)
        eager_total, eager_grad = answer_loss.eager_loss_and_grad(logits, labels, need_grad=True)
        assert grad.dtype == dtype and not grad[0].any()  # an ignored position has no gradient
        torch.testing.assert_close(total, eager_total, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(grad, eager_grad.to(dtype))


def test_a_fused_chunk_holds_at_least_its_minimum_of_positions(monkeypatch):
    """With the compiled kernel the chunk is no smaller than FUSED_MIN_POSITIONS; without it, CPU_CHUNK logits."""
    seen = []
    monkeypatch.setattr(answer_loss.ChunkedAnswerLoss, "apply", lambda *args: seen.append(args[4]) or torch.zeros(()))
    head = torch.nn.Linear(8, 2**20, bias=False)  # CPU_CHUNK logits are 16 positions of this vocabulary
    hidden, labels = torch.zeros(600, 8), torch.zeros(600, dtype=torch.long)
    for fused in (True, False):
        chunked_loss(hidden, head, labels, fused_on_cpu=fused)
    fused_chunk = answer_loss.FUSED_MIN_POSITIONS if answer_loss.fuses(torch.device("cpu"), True) else 16
    assert seen == [fused_chunk, 16]


def test_small_batches_and_other_batches_keep_transformers_path(monkeypatch):
    model = lora("llama")
    answer_loss.use_chunked_answer_loss(model.get_base_model(), chunk_on_cpu=False)
    batch = packed_batch()
    assert model(**batch).logits is not None  # under the budget, not always chunked: transformers' own forward
    monkeypatch.setattr(answer_loss, "LOGITS_BUDGET", 3 * 128)
    padded = {"input_ids": batch["input_ids"], "labels": batch["labels"]}  # no shift_labels: not a packed answer batch
    assert model(**padded).logits.shape[1] == batch["input_ids"].shape[1]


def test_a_trainable_output_projection_keeps_transformers_path():
    model = tiny_model("llama").float()  # full fine-tuning: the output projection trains
    forward = model.forward
    answer_loss.use_chunked_answer_loss(model)
    assert model.forward == forward


def test_training_with_the_chunked_loss_logs_the_same_losses(tmp_path, tiny_model_dir, monkeypatch):
    """`tunelab train` end to end (Trainer, num_items_in_batch, evaluation), chunked and not: the same logged losses."""
    from test_train import make_recipe

    from tunelab.io import read_jsonl
    from tunelab.train.run import StepChoices, train_recipe

    def losses(folder: str) -> list[float]:
        step = StepChoices(chunked_loss_on_cpu=folder == "chunked")
        run = train_recipe(make_recipe(tmp_path / folder, tiny_model_dir, precision="fp32", max_steps=3, eval_steps=3), step=step)
        rows = read_jsonl(run / "train" / "metrics.jsonl")
        return [r[k] for r in rows for k in ("loss", "eval_loss") if k in r]

    plain = losses("plain")
    calls = []
    monkeypatch.setattr(answer_loss, "CPU_CHUNK", 1)  # one position per chunk
    monkeypatch.setattr(answer_loss, "FUSED_MIN_POSITIONS", 1)
    monkeypatch.setattr(answer_loss, "chunked_loss", lambda *a, **kw: calls.append(1) or chunked_loss(*a, **kw))
    chunked = losses("chunked")
    assert calls, "the chunked loss never ran"
    assert len(plain) == len(chunked) >= 4
    assert chunked == pytest.approx(plain, rel=1e-4)
