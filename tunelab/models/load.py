"""Load tokenizers and models from a resolved folder, with the settings tunelab relies on."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from transformers.utils import logging as transformers_logging

from tunelab.cpu import cpu, default_threads
from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE

# transformers' bars that cut through tunelab's own progress lines, by description: one per model it
# loads, saves (export's save_pretrained) or reads from a GGUF file (`tunelab models fetch`). Other
# bars (downloads) stay. tunelab/__init__.py holds the other noise filters.
HIDDEN_BARS = ("Loading weights", "Writing model shards", "Converting and de-quantizing GGUF tensors")


def route_gguf_bar_through_hook() -> None:
    """transformers' GGUF reader draws its bar with tqdm itself, which the hook below never sees: give it
    transformers' own tqdm, which asks the hook, like every other bar of transformers."""
    from transformers import modeling_gguf_pytorch_utils  # here: only reading a GGUF file needs this module

    modeling_gguf_pytorch_utils.tqdm = transformers_logging.tqdm


def _no_weight_loading_bars(factory, args, kwargs):
    """The hook transformers' tqdm asks before drawing a bar: HIDDEN_BARS are made disabled."""
    if str(kwargs.get("desc", "")).startswith(HIDDEN_BARS):
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


transformers_logging.set_tqdm_hook(_no_weight_loading_bars)


def set_threads(num_threads: int | None = None) -> int:
    """Use `num_threads` torch threads, or default_threads()."""
    n = num_threads or default_threads()
    torch.set_num_threads(n)
    return n


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.model_max_length or tokenizer.model_max_length > 1e9:
        tokenizer.model_max_length = 8192
    return tokenizer


def bf16_supported() -> bool:
    """bf16 autocast pays on CUDA with bf16, and on the CPUs tunelab.cpu says so of (AVX512-BF16 or AMX)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu().bf16_matmul


def wants_bf16(precision: str) -> bool:
    """`bf16` always; `auto` where the hardware supports it (see bf16_supported); `fp32` never."""
    return precision == "bf16" or (precision == "auto" and bf16_supported())


def load_causal_lm(
    path: str | Path, *, dtype: str = "float32", load_in_4bit: bool = False, trust_remote_code: bool = False, device: str | None = None
):
    """A causal LM from a local folder. `load_in_4bit` uses bitsandbytes NF4 (QLoRA)."""
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16_supported() else torch.float32,
        )
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if device and not load_in_4bit:
        model.to(device)
    return model
