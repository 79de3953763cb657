"""`gguf-lora`: a run's LoRA adapter as a GGUF file, beside its base model's GGUF, for llama.cpp and Ollama.

- The adapter is converted by llama.cpp's own `convert_lora_to_gguf.py`, in f16 (a few MB: two
  rank-r matrices per adapted weight).
- Its base is the run's base model as a Q8_0 GGUF (`config.LORA_BASE_QUANT`): the file converted
  once into tunelab's cache (`llama_cpp.base_model_gguf`, also the code benchmark's) is linked into
  the export, a hard link where the file system allows (no second copy on disk), else a copy, so the
  folder works on its own and every adapter of one base uses the same base file.
- A QLoRA adapter was trained against its base quantized to 4 bit (NF4). As in the merged export, its
  base GGUF is made from that base dequantized (`<base>-nf4-q8_0.gguf`, converted in each export): the
  original weights differ from the ones the adapter learned to correct, by the NF4 rounding.
- What the GGUF adapter format cannot hold is refused before any heavy work: full weights (no adapter),
  DoRA's magnitude vectors, modules trained whole beside the adapter (`modules_to_save`), biases, and
  per-module alphas. rsLoRA scales an adapter by alpha/sqrt(r) where llama.cpp scales by alpha/r, so the
  adapter's alpha is written as alpha·sqrt(r) (the same scale).
- Before anything is published, `check_lora_fits` checks the adapter against the base file the way
  llama.cpp will (architecture, each adapted tensor's shape); the faithfulness check then compares the
  pair's greedy answers with the PyTorch model's, as for every export.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from tunelab.config import LORA_BASE_QUANT
from tunelab.errors import TunelabError
from tunelab.export.llama_cpp import base_model_gguf, convert_and_quantize, convert_lora_to_gguf
from tunelab.export.merge import base_model_path, qlora_base, save_merged
from tunelab.io import atomic_write_json, atomic_write_text, read_json
from tunelab.models.catalog import lookup
from tunelab.models.llama_cpp import check_lora_fits
from tunelab.models.load import load_tokenizer
from tunelab.runs import MODEL_INFO, ExportDir, is_adapter, model_interpolation, model_weights, read_model_info

NOT_IN_GGUF = "llama.cpp's LoRA GGUF cannot hold it; export a merged GGUF (gguf-q8_0) instead"


def check_adapter(model_dir: Path) -> dict:
    """The adapter's PEFT config (adapter_config.json), or a clear error for a model gguf-lora cannot carry."""
    model_dir = Path(model_dir)
    if not is_adapter(model_dir):
        weights = model_weights(read_model_info(model_dir)) or "pretrained"
        raise TunelabError(
            f"{model_dir}: gguf-lora writes a LoRA adapter, and this model has no adapter (weights {weights}: every weight "
            f"is its own); export a merged GGUF (gguf-q8_0) instead"
        )
    path = model_dir / "adapter_config.json"
    config = read_json(path)
    problems = [
        ("peft_type", config.get("peft_type", "LORA") != "LORA", f"is {config.get('peft_type')!r}, not LoRA"),
        ("use_dora", config.get("use_dora"), "is true: DoRA adds a magnitude vector to every adapted weight"),
        ("modules_to_save", config.get("modules_to_save"), f"trains {config.get('modules_to_save')} whole beside the adapter"),
        ("bias", config.get("bias", "none") != "none", f"is {config.get('bias')!r}: the adapter trains biases"),
        ("alpha_pattern", config.get("alpha_pattern"), "gives some modules their own alpha, and a LoRA GGUF has one"),
        ("rank_pattern", config.get("use_rslora") and config.get("rank_pattern"), "gives rsLoRA modules their own rank"),
    ]
    for field, found, why in problems:
        if found:
            raise TunelabError(f"{path}: field '{field}' {why}; {NOT_IN_GGUF}")
    alpha = model_interpolation(model_dir, read_model_info(model_dir))
    if alpha != 1.0:  # llama.cpp and Ollama apply an adapter file at full strength
        raise TunelabError(
            f"{model_dir / MODEL_INFO}: field 'interpolation' is {alpha}, which the adapter alone does not carry; {NOT_IN_GGUF}"
        )
    return config


def write_lora_pair(model_dir: Path, name: str, stage: ExportDir, *, threads: int | None = None) -> tuple[Path, Path]:
    """(base GGUF, adapter GGUF), written into `stage`'s gguf-lora/ folder and checked to fit each other."""
    model_dir = Path(model_dir)
    config = check_adapter(model_dir)
    base_dir = base_model_path(model_dir)
    stage.lora.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=stage.root) as work:
        source = _converter_input(model_dir, config, name, Path(work) / "adapter")
        adapter = convert_lora_to_gguf(source, base_dir, stage.lora_adapter(name), log_file=stage.convert_lora_log)
        if model_weights(read_model_info(model_dir)) == "qlora":
            base = _qlora_base_gguf(base_dir, stage, Path(work) / "nf4-base", threads)
        else:
            base = _link(base_model_gguf(base_dir, LORA_BASE_QUANT, threads=threads), stage.lora_base(base_dir.name, LORA_BASE_QUANT))
    check_lora_fits(base, adapter)
    return base, adapter


def _converter_input(model_dir: Path, config: dict, name: str, folder: Path) -> Path:
    """What the converter reads: the adapter's weights and config (rsLoRA's alpha rescaled, see the module
    docstring) and a model card naming the adapter and, for a catalog base, its hub id. peft's own card
    names the base by its local path, which would end up in the GGUF's metadata."""
    folder.mkdir()
    os.symlink((model_dir / "adapter_model.safetensors").resolve(), folder / "adapter_model.safetensors")
    if config.get("use_rslora"):
        config = {**config, "lora_alpha": config["lora_alpha"] * math.sqrt(config["r"]), "use_rslora": False}
    atomic_write_json(folder / "adapter_config.json", config)
    catalog = lookup(read_model_info(model_dir).get("base_model") or "")
    card = [f"model_name: {name}-lora"] + ([f"base_model: {catalog.hub_id}"] if catalog else [])
    atomic_write_text(folder / "README.md", "---\n" + "\n".join(card) + "\n---\n")
    return folder


def _qlora_base_gguf(base_dir: Path, stage: ExportDir, work: Path, threads: int | None) -> Path:
    """The NF4-dequantized base (what a QLoRA adapter was trained against) as a GGUF in LORA_BASE_QUANT."""
    save_merged(qlora_base(base_dir), load_tokenizer(base_dir), work)
    return convert_and_quantize(work, stage.lora_base(f"{base_dir.name}-nf4", LORA_BASE_QUANT), LORA_BASE_QUANT, threads=threads)


def _link(cached: Path, target: Path) -> Path:
    """`cached` at `target`: a hard link (no second copy) where both are on one file system, else a copy."""
    try:
        os.link(cached, target)
    except OSError:
        shutil.copyfile(cached, target)
    return target
