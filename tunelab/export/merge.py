"""Load a trained model as PyTorch (base + adapter) and merge it into one standard Hugging Face folder.

A LoRA adapter is added into the base weights with peft's `merge_and_unload`. A QLoRA adapter was
trained against the 4-bit (NF4) base, so its base is loaded in 4 bit and dequantized first: the
merged weights are then the weights the adapter was trained on, not the original full-precision
ones. Full fine-tuned weights are loaded as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open

from tunelab.errors import ModelNotFound, TunelabError
from tunelab.models.interpolate import interpolate_toward_base
from tunelab.models.load import load_causal_lm, load_tokenizer
from tunelab.models.resolve import resolve_model
from tunelab.runs import MODEL_INFO, is_adapter, model_interpolation, model_weights, read_model_info, require_base_model


def base_model_path(model_dir: Path) -> Path | None:
    """The resolved base model folder of an adapter (None for full weights)."""
    if not is_adapter(model_dir):
        return None
    info = read_model_info(model_dir)
    ref = info.get("base_model") or json.loads((Path(model_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not ref:
        raise TunelabError(f"{Path(model_dir) / MODEL_INFO}: field 'base_model' is missing, so the adapter's base is unknown")
    try:
        return resolve_model(ref).path
    except ModelNotFound:
        fallback = info.get("base_model_path")
        if fallback and Path(fallback, "config.json").is_file():
            return Path(fallback)
        raise


def weights_config_dir(model_dir: Path) -> Path:
    """The folder whose config.json describes the architecture (the base for an adapter)."""
    return base_model_path(model_dir) or Path(model_dir)


def load_pytorch_model(model_dir: Path):
    """(model, tokenizer, info): the trained model in fp32 as PyTorch runs it, moved toward its base by the
    interpolation its tunelab_model.json records (models/interpolate.py); adapters stay unmerged."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    tokenizer = load_tokenizer(model_dir)
    base = base_model_path(model_dir)
    alpha = model_interpolation(model_dir, info)
    if base is None:
        model = load_causal_lm(model_dir)
        if alpha != 1.0:  # full weights move toward their base model
            model = interpolate_toward_base(model, alpha, resolve_model(require_base_model(model_dir, info)).path)
    else:
        model = qlora_base(base) if model_weights(info) == "qlora" else load_causal_lm(base)
        model = interpolate_toward_base(PeftModel.from_pretrained(model, str(model_dir)), alpha)
    return model.eval(), tokenizer, info


def qlora_base(base: Path):
    """The weights a QLoRA adapter was trained against: the base loaded in 4 bit (NF4, as in training), dequantized to fp32."""
    return load_causal_lm(base, load_in_4bit=True).dequantize().to(torch.float32)


def merged_model(model):
    """Fold LoRA weights into the base (no-op for a plain model)."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def save_merged(model, tokenizer, out_dir: Path) -> Path:
    """Save a merged fp32 model as a standard Hugging Face folder: safetensors, config, generation
    config, tokenizer and chat template. `out_dir` should be a fresh (temporary) folder."""
    out_dir = Path(out_dir)
    model = merged_model(model)
    gen = model.generation_config
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.config._name_or_path = out_dir.name
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _fill_converter_fields(out_dir / "config.json")
    return out_dir


def _fill_converter_fields(config_path: Path) -> None:
    """Fields llama.cpp's converter reads that transformers 5 no longer writes (GPT-2's n_ctx)."""
    config = json.loads(config_path.read_text())
    changed = False
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        config["n_ctx"] = config["n_positions"]
        changed = True
    if changed:
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def count_parameters(hf_dir: Path) -> int:
    """Parameters of a saved model, read from its safetensors headers (no weights loaded)."""
    total = 0
    for f in Path(hf_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total
