"""WiSE-FT interpolation toward the base (`train.interpolation`): applied by every loader of a trained model,
exact on a real (tiny) LoRA adapter and on full weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.export.merge import load_pytorch_model, merged_model
from tunelab.models.chat import load_chat_model
from tunelab.models.load import load_causal_lm, load_tokenizer
from tunelab.runs import MODEL_INFO, write_model_info

PROMPT = "Who are you? I am a small model."


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter with random A and B (a real update, unlike peft's zero-initialised B), saved as a run's model/."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(load_causal_lm(tiny_model_dir), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # large enough to move the logits visibly
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    return folder


def with_alpha(source: Path, target: Path, base: Path, alpha: float | None, method: str) -> Path:
    shutil.copytree(source, target)
    info = {"base_model": str(base), "method": method, **({"interpolation": alpha} if alpha is not None else {})}
    write_model_info(target, info)
    return target


def test_lora_alpha_0_is_the_base_1_the_tuned_model_half_the_midpoint(tmp_path, tiny_model_dir, adapter_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    base = load_causal_lm(tiny_model_dir).eval()
    base_logits = logits(base, tokenizer)
    runs = {a: with_alpha(adapter_dir, tmp_path / f"a{a}", tiny_model_dir, a, "lora") for a in (0.0, 0.5, 1.0)}
    unset = with_alpha(adapter_dir, tmp_path / "unset", tiny_model_dir, None, "lora")

    # the evaluation and serving loader (transformers backend)
    tuned_logits = logits(load_chat_model(runs[1.0]).model, tokenizer)
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-3)  # the adapter really changes the model
    assert torch.allclose(logits(load_chat_model(unset).model, tokenizer), tuned_logits)  # no interpolation recorded: as trained
    assert torch.allclose(logits(load_chat_model(runs[0.0]).model, tokenizer), base_logits, atol=1e-5)

    # the export loader: the merged weights at 0.5 are the midpoint of the base's and the tuned model's
    merged = {a: dict(merged_model(load_pytorch_model(runs[a])[0]).named_parameters()) for a in (0.0, 0.5, 1.0)}
    base_params = dict(base.named_parameters())
    name = next(n for n in base_params if n.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.allclose(merged[1.0][name], base_params[name], atol=1e-3)
    assert torch.allclose(merged[0.0][name], base_params[name], atol=1e-6)
    assert torch.allclose(merged[0.5][name], (base_params[name] + merged[1.0][name]) / 2, atol=1e-6)
    # both loaders agree: the chat model at 0.5 gives the merged midpoint model's logits
    half = load_chat_model(runs[0.5]).model
    assert torch.allclose(logits(half, tokenizer), logits(merged_model(load_pytorch_model(runs[0.5])[0]), tokenizer), atol=1e-4)


def test_full_weights_interpolate_parameter_by_parameter(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    tuned = load_causal_lm(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    tuned.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")
    half = with_alpha(tmp_path / "tuned", tmp_path / "half", tiny_model_dir, 0.5, "full")
    zero = with_alpha(tmp_path / "tuned", tmp_path / "zero", tiny_model_dir, 0.0, "full")

    base = dict(load_causal_lm(tiny_model_dir).named_parameters())
    tuned_params = dict(tuned.named_parameters())
    for loaded in (load_pytorch_model(half)[0], load_chat_model(half).model):
        for name, param in loaded.named_parameters():
            assert torch.allclose(param, (base[name] + tuned_params[name]) / 2, atol=1e-6), name
    base_logits = logits(load_causal_lm(tiny_model_dir).eval(), tokenizer)
    assert torch.allclose(logits(load_chat_model(zero).model, tokenizer), base_logits, atol=1e-5)


def test_bad_recorded_interpolation_names_the_file_and_field(tmp_path, tiny_model_dir, adapter_dir):
    bad = with_alpha(adapter_dir, tmp_path / "bad", tiny_model_dir, 1.5, "lora")
    with pytest.raises(TunelabError, match=rf"{bad / MODEL_INFO}: field 'interpolation' is 1.5; it must be a number from 0 to 1"):
        load_chat_model(bad)
    info = json.loads((bad / MODEL_INFO).read_text())
    write_model_info(bad, {**info, "interpolation": "half"})
    with pytest.raises(TunelabError, match="field 'interpolation' is 'half'"):
        load_pytorch_model(bad)


def test_an_interpolated_run_is_refused_for_an_adapter_gguf(tmp_path, tiny_model_dir, adapter_dir):
    # llama.cpp and Ollama apply an adapter file at full strength: gguf-lora would silently drop α
    from tunelab.config import recipe_from_dict
    from tunelab.errors import ConfigError
    from tunelab.export.lora import check_adapter

    half = with_alpha(adapter_dir, tmp_path / "half", tiny_model_dir, 0.5, "lora")
    with pytest.raises(TunelabError, match=rf"{half / MODEL_INFO}: field 'interpolation' is 0.5"):
        check_adapter(half)
    assert check_adapter(with_alpha(adapter_dir, tmp_path / "whole", tiny_model_dir, None, "lora"))["r"] == 4
    recipe = {"model": str(tiny_model_dir), "data": {"sources": [{"path": "x.json"}]}, "export": {"formats": ["gguf-lora"]}}
    with pytest.raises((ConfigError, ValueError), match="train.interpolation is 0.5"):
        recipe_from_dict({**recipe, "train": {"interpolation": 0.5}}, "recipe.yaml")
