"""llama.cpp's converter (HF folder -> GGUF) and quantizer. Running a GGUF is the models stage's
job (tunelab/models/llama_cpp.py: LlamaCppChatModel, metadata, llama-cpp-python itself).

- The converter is llama.cpp's own `convert_hf_to_gguf.py` with its `conversion/` package and
  `gguf-py`. The `gguf` wheel does not carry them; the llama-cpp-python source distribution
  does. tunelab extracts them once into `<cache>/llama.cpp/<version>/` and runs the script
  with this Python as a subprocess.
- Quantizing (Q8_0, Q4_K_M) goes through `llama_cpp.llama_model_quantize`, the same C function
  llama.cpp's `llama-quantize` binary calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import subprocess
import sys
import tarfile
from functools import lru_cache
from pathlib import Path

from tunelab.cpu import default_threads
from tunelab.errors import TunelabError
from tunelab.io import atomic_dir
from tunelab.models.llama_cpp import LLAMA_CPP_VERSION, LlamaCppMissing, require_llama_cpp
from tunelab.paths import cache_dir

SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
QUANT_TYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


# ------------------------------------------------------------------ the converter
PORTABLE_WHEELS = "llama-cpp-portable"  # the Makefile's LLAMA_WHEELS folder under its wheel cache: keep the two equal


def wheel_dirs() -> list[Path]:
    """Where the llama-cpp-python sdist and the portable wheel are cached (tunelab's cache, and the Makefile's)."""
    roots = [cache_dir() / "wheels", Path.home() / ".cache" / "tunelab" / "wheels"]
    return list(dict.fromkeys(d for root in roots for d in (root, root / PORTABLE_WHEELS)))


def find_sdist() -> Path:
    """The llama-cpp-python source distribution: from the wheel cache, else downloaded with pip."""
    for d in wheel_dirs():
        if (d / SDIST_NAME).is_file():
            return d / SDIST_NAME
    target = wheel_dirs()[0]
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={LLAMA_CPP_VERSION}",
        "-d",
        str(target),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        done = None
        reason = str(err)
    else:
        reason = (done.stderr or done.stdout).strip()[-500:]
    if done is not None and done.returncode == 0 and (target / SDIST_NAME).is_file():
        return target / SDIST_NAME
    raise LlamaCppMissing(
        f"llama.cpp's converter (convert_hf_to_gguf.py) comes from the llama-cpp-python {LLAMA_CPP_VERSION} source "
        f"distribution, which is neither in {' nor '.join(str(d) for d in wheel_dirs())} nor downloadable "
        f"({reason or 'pip failed'}). Put {SDIST_NAME} in {target} (`make setup-gguf` does) and retry."
    )


def converter_dir() -> Path:
    """`<cache>/llama.cpp/<version>/` holding convert_hf_to_gguf.py, conversion/ and gguf-py/ (extracted once)."""
    out = cache_dir() / "llama.cpp" / LLAMA_CPP_VERSION
    if (out / "convert_hf_to_gguf.py").is_file():
        return out
    sdist = find_sdist()
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    with atomic_dir(out) as tmp, tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(prefix) :]
            if rel.startswith(wanted):
                m.name = rel
                members.append(m)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise LlamaCppMissing(f"{sdist} does not contain vendor/llama.cpp/convert_hf_to_gguf.py")
        tar.extractall(tmp, members=members, filter="data")
    return out


def _converter_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("NO_LOCAL_GGUF", None)  # the script puts its own gguf-py first on sys.path
    return env


@lru_cache(maxsize=1)
def supported_architectures() -> frozenset[str]:
    """The text-model architectures (config.json `architectures`) llama.cpp's converter knows."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    done = subprocess.run(
        [sys.executable, str(script), "--print-supported-models"], capture_output=True, text=True, env=_converter_env(), timeout=300
    )
    names, in_text = set(), False
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        if line.strip().endswith("models:"):
            in_text = line.strip().startswith("TEXT")
        elif in_text and line.strip().startswith("- "):
            names.add(line.strip()[2:].strip())
    if not names:
        raise TunelabError(f"could not list the architectures llama.cpp's converter supports:\n{done.stderr[-1000:]}")
    return frozenset(names)


def model_architecture(hf_dir: Path) -> str:
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    archs = config.get("architectures") or []
    if not archs:
        raise TunelabError(f"{hf_dir}/config.json: field 'architectures' is missing, so the GGUF converter cannot pick a model class")
    return archs[0]


def check_gguf_architecture(hf_dir: Path) -> str:
    """Fail early, with a clear message, for an architecture llama.cpp cannot convert."""
    arch = model_architecture(hf_dir)
    supported = supported_architectures()
    if arch not in supported:
        examples = ", ".join(
            a
            for a in [
                "LlamaForCausalLM",
                "Qwen2ForCausalLM",
                "Gemma3ForCausalLM",
                "MistralForCausalLM",
                "Phi3ForCausalLM",
                "GPT2LMHeadModel",
            ]
            if a in supported
        )
        raise TunelabError(
            f"{hf_dir}/config.json: architecture '{arch}' cannot be converted to GGUF by llama.cpp's converter "
            f"(llama-cpp-python {LLAMA_CPP_VERSION}; it supports {len(supported)} text architectures, e.g. {examples}). "
            f"Export the `merged` format instead, or pick a supported base model."
        )
    return arch


def convert_hf_to_gguf(hf_dir: Path, out_file: Path, outtype: str = "f16", *, log_file: Path | None = None) -> Path:
    """Convert a Hugging Face folder to one GGUF file with llama.cpp's converter (atomic)."""
    hf_dir, out_file = Path(hf_dir), Path(out_file)
    check_gguf_architecture(hf_dir)
    script = converter_dir() / "convert_hf_to_gguf.py"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype, "--model-name", out_file.stem]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=_converter_env())
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text("$ " + " ".join(cmd) + "\n" + done.stdout + done.stderr)
        if done.returncode != 0 or not tmp.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise TunelabError(f"llama.cpp's converter failed on {hf_dir} (exit {done.returncode}):\n{tail}")
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return out_file


def quantize_gguf(src: Path, dst: Path, qtype: str, *, threads: int | None = None, log_file: Path | None = None) -> Path:
    """Quantize a (f16) GGUF to `qtype` (q8_0, q4_k_m) with llama.cpp's quantizer (atomic)."""
    llama_cpp = require_llama_cpp()
    if qtype not in QUANT_TYPES:
        raise TunelabError(f"unknown quantization '{qtype}' (choose from {', '.join(QUANT_TYPES)})")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype])
    params.nthread = threads or default_threads()
    try:
        with _stderr_to(log_file):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise TunelabError(f"llama.cpp could not quantize {src} to {qtype} (return code {rc})")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


@contextlib.contextmanager
def _stderr_to(log_file: Path | None):
    """Send the C library's stderr (llama.cpp logs every tensor it quantizes) to a file."""
    py_logger = logging.getLogger("llama-cpp-python")  # llama-cpp-python's log callback prints below ERROR unless raised
    old_level = py_logger.level
    py_logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    target = open(log_file, "ab") if log_file else open(os.devnull, "wb")
    try:
        os.dup2(target.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        target.close()
        py_logger.setLevel(old_level)
