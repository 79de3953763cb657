"""WiSE-FT interpolation toward the base model: the weights base + α × (tuned − base).

Fine-tuning for one task can cost general ability; moving the tuned weights part of the way back
toward the base often keeps most of the task gain and much of what was lost (Wortsman et al.,
"Robust fine-tuning of zero-shot models", 2022). α = 1 is the model as trained, α = 0 the base.

This is the one place interpolation is applied. Every loader of a trained model calls
`interpolate_toward_base` with the α its tunelab_model.json records (`runs.model_interpolation`,
written from the recipe's `train.interpolation`): models/hf_chat.py (evaluation, the
general-ability check, serving) and export/merge.py (the merged folder and every GGUF).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.models.load import load_causal_lm


def interpolate_toward_base(model, alpha: float, base_path: str | Path | None = None):
    """`model` moved to base + α × (model − base), in place; returns it.

    A PEFT LoRA model: every adapter's scaling is multiplied by α. Its merged weights are
    W + s·B·A, so this gives W + α·s·B·A, exactly the interpolation of the merged weights.
    Full weights: each parameter becomes lerp(base, tuned, α), the base read from `base_path`.
    """
    if alpha == 1.0:
        return model
    if hasattr(model, "peft_config"):
        _scale_adapters(model, alpha)
    elif base_path is None:
        raise TunelabError("interpolating full fine-tuned weights needs the base model's folder")
    else:
        _lerp_from_base(model, alpha, Path(base_path))
    return model


def _scale_adapters(model, alpha: float) -> None:
    # peft is already imported (the model is a PeftModel); imported here so that loading full weights never pays for it
    from peft.tuners.lora import LoraLayer

    for name, config in model.peft_config.items():
        if getattr(config, "modules_to_save", None):
            raise TunelabError(
                f"adapter '{name}' trains whole modules ({config.modules_to_save}) beside LoRA: interpolation cannot scale those"
            )
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise TunelabError("interpolation: the adapter has no LoRA layers to scale")
    for layer in layers:
        if any(layer.use_dora.values()):
            raise TunelabError(
                "interpolation: a DoRA adapter's update cannot be scaled into an interpolation (its magnitudes are normalised)"
            )
        if getattr(layer, "merged", False):
            raise TunelabError("interpolation: scale an adapter before merging it")
        layer.scale_layer(alpha)


def _lerp_from_base(model, alpha: float, base_path: Path) -> None:
    base = dict(load_causal_lm(base_path).named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in base or base[name].shape != param.shape:
                raise TunelabError(f"interpolation: the base model {base_path} has no parameter {name} of shape {tuple(param.shape)}")
            param.lerp_(base[name].to(param.dtype), 1.0 - alpha)  # tuned + (1 − α)(base − tuned)
