"""llama.cpp's converters (HF folder -> GGUF, PEFT LoRA adapter -> adapter GGUF) and quantizer, and
the cache of base models' GGUFs. Running a GGUF is the models stage's job (tunelab/models/llama_cpp.py:
LlamaCppChatModel, metadata, llama-cpp-python itself).

- The converters are llama.cpp's own `convert_hf_to_gguf.py` and `convert_lora_to_gguf.py` with
  their `conversion/` package and `gguf-py`. The `gguf` wheel does not carry them; the
  llama-cpp-python source distribution does. tunelab extracts them once into
  `<cache>/llama.cpp/<version>/` and runs the scripts with this Python as a subprocess.
- Quantizing (Q8_0, Q4_K_M) goes through `llama_cpp.llama_model_quantize`, the same C function
  llama.cpp's `llama-quantize` binary calls.
- Quantizing with an importance matrix (the `_imat` formats) needs llama.cpp's own tools: `llama-imatrix`
  computes the matrix and `llama-quantize --imatrix` applies it (the C API takes the matrix as a pointer
  to a C++ map, which Python cannot build). `llama_tools` builds the two from the same sdist's
  vendor/llama.cpp with cmake, once, into `<cache>/llama.cpp/<version>/tools-<cpu>/`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

from tunelab.cpu import cpu, default_threads
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, cache_lock
from tunelab.models.llama_cpp import LLAMA_CPP_VERSION, LlamaCppMissing, gguf_metadata, require_llama_cpp
from tunelab.paths import cache_dir
from tunelab.progress import console, progress_bar
from tunelab.runs import ExportDir

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


# what tunelab takes from the sdist's vendor/llama.cpp/: the two converters, the package they share, gguf-py
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py", "LICENSE")


def converter_dir() -> Path:
    """`<cache>/llama.cpp/<version>/` holding CONVERTER_FILES, each extracted once. Each missing entry
    appears whole (a rename) and present ones are left alone: a converter may be running from them
    (a folder extracted before the LoRA converter was added gets that script alone)."""
    out = cache_dir() / "llama.cpp" / LLAMA_CPP_VERSION
    missing = [f for f in CONVERTER_FILES if not (out / f).exists()]
    if not missing:
        return out
    sdist = find_sdist()
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".llama.cpp.", dir=out.parent) as tmp, tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix) :]
            if m.name.startswith(prefix) and (m.isfile() or m.isdir()) and rel.split("/")[0] in missing:
                m.name = rel
                members.append(m)
        absent = [f for f in missing if not any(m.name == f or m.name.startswith(f + "/") for m in members)]
        if absent:
            raise LlamaCppMissing(f"{sdist} does not contain {', '.join('vendor/llama.cpp/' + f for f in absent)}")
        tar.extractall(tmp, members=members, filter="data")
        out.mkdir(exist_ok=True)
        for f in missing:
            try:
                os.replace(Path(tmp) / f, out / f)
            except OSError:
                if not (out / f).exists():  # not another process extracting it at the same moment
                    raise
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


def convert_hf_to_gguf(
    hf_dir: Path, out_file: Path, outtype: str = "f16", *, log_file: Path | None = None, model_name: str | None = None
) -> Path:
    """Convert a Hugging Face folder to one GGUF file with llama.cpp's converter (atomic); its general.name is
    `model_name`, else the file's stem."""
    hf_dir, out_file = Path(hf_dir), Path(out_file)
    check_gguf_architecture(hf_dir)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    args = [str(hf_dir), "--outfile", str(tmp), "--outtype", outtype, "--model-name", model_name or out_file.stem]
    return _run_converter("convert_hf_to_gguf.py", args, hf_dir, tmp, out_file, log_file)


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, out_file: Path, *, log_file: Path | None = None) -> Path:
    """Convert a PEFT LoRA adapter folder to an f16 adapter GGUF with llama.cpp's convert_lora_to_gguf.py
    (atomic). `base_dir` is the base model's folder: the converter reads its config (the architecture and
    how its tensors are named and laid out in GGUF), not its weights."""
    adapter_dir, base_dir, out_file = Path(adapter_dir), Path(base_dir), Path(out_file)
    check_gguf_architecture(base_dir)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    args = [str(adapter_dir), "--base", str(base_dir), "--outfile", str(tmp), "--outtype", "f16"]
    return _run_converter("convert_lora_to_gguf.py", args, adapter_dir, tmp, out_file, log_file)


def _run_converter(script: str, args: list[str], source: Path, tmp: Path, out_file: Path, log_file: Path | None) -> Path:
    """Run one of llama.cpp's converter scripts with this Python, writing `tmp`, then rename it to `out_file`."""
    cmd = [sys.executable, str(converter_dir() / script), *args]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=_converter_env())
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text("$ " + " ".join(cmd) + "\n" + done.stdout + done.stderr)
        if done.returncode != 0 or not tmp.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            what = "converter" if script == "convert_hf_to_gguf.py" else f"converter ({script})"
            raise TunelabError(f"llama.cpp's {what} failed on {source} (exit {done.returncode}):\n{tail}")
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return out_file


def convert_and_quantize(hf_dir: Path, out_file: Path, quant: str, *, threads: int | None = None) -> Path:
    """`hf_dir` as one GGUF file in `quant`: llama.cpp's converter writes f16, its quantizer the rest
    (the f16 intermediate, beside `out_file`, is removed)."""
    out_file = Path(out_file)
    if quant == "f16":
        return convert_hf_to_gguf(hf_dir, out_file, "f16")
    f16 = convert_hf_to_gguf(hf_dir, out_file.with_suffix(".f16.tmp"), "f16", model_name=out_file.stem)
    try:
        return quantize_gguf(f16, out_file, quant, threads=threads)
    finally:
        f16.unlink(missing_ok=True)


def base_model_gguf(model_dir: Path, quant: str, *, threads: int | None = None) -> Path:
    """A base model's GGUF in `quant`, converted once into tunelab's cache (<cache>/base-exports/<folder
    name>/, laid out like a run's export folder) and shared by every user: the code benchmark's GGUF
    backend and every gguf-lora export of that base. It is converted again when the folder or any of its
    files changed since (its source.json records which folder and files it was made from)."""
    model_dir = Path(model_dir).resolve()
    export = ExportDir(cache_dir() / "base-exports" / model_dir.name)
    out = export.gguf_file(model_dir.name, quant)
    source = {
        "folder": str(model_dir),
        "files": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(model_dir.iterdir()) if f.is_file()},
    }
    with cache_lock(export.root):  # another process may be converting this base: wait, then find its file
        recorded = json.loads(export.source_json.read_text()) if export.source_json.is_file() else None
        if out.is_file() and recorded == source:
            return out
        if recorded != source:  # files made from another folder, or from these files before they changed
            for stale in export.gguf_files():
                stale.unlink()
            export.source_json.unlink(missing_ok=True)
        console.print(f"converting {model_dir.name} to a {quant} GGUF once (cached in {export.gguf})")
        convert_and_quantize(model_dir, out, quant, threads=threads)
        atomic_write_json(export.source_json, source)
    return out


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


# ------------------------------------------------------------------ llama-imatrix and llama-quantize
TOOLS = ("llama-imatrix", "llama-quantize")
# only what the two tools need: ggml and llama linked statically into each binary (nothing to find at run
# time), no server, tests, examples, TLS or compiler cache; tuned for this CPU (GGML_NATIVE), which is why
# the folder is keyed by the CPU (a home folder shared with another machine gets a build of its own)
TOOLS_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
# measured on the 2-core Xeon at nice 19 beside a training job (docs/export.md, importance-matrix section)
TOOLS_BUILD_NOTE = "about 12 minutes on 2 busy cores"


def tools_dir() -> Path:
    """`<cache>/llama.cpp/<version>/tools-<cpu>/`: where `llama_tools` keeps llama-imatrix and llama-quantize."""
    features = cpu()
    key = hashlib.sha1(" ".join([features.arch, *sorted(features.flags)]).encode()).hexdigest()[:10]
    return cache_dir() / "llama.cpp" / LLAMA_CPP_VERSION / f"tools-{key}"


def llama_tools() -> Path:
    """The folder holding TOOLS, built on first use from the sdist's vendor/llama.cpp (cmake, all cores at the
    lowest priority: a one-time build that should not slow what else runs), with a progress bar and ETA. The
    folder appears whole (a rename), so an interrupted build leaves nothing that looks finished."""
    out = tools_dir()
    if all((out / t).is_file() for t in TOOLS):
        return out
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise LlamaCppMissing(
            "quantizing with an importance matrix needs llama.cpp's llama-imatrix and llama-quantize, which tunelab builds "
            f"once with cmake and a C++ compiler; {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH "
            "(e.g. `apt-get install cmake g++`)"
        )
    sdist = find_sdist()
    out.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"building llama.cpp's {' and '.join(TOOLS)} once ({TOOLS_BUILD_NOTE}; cached in {out})")
    with tempfile.TemporaryDirectory(prefix=".tools-build.", dir=out.parent) as tmp:
        source, build = _extract_llama_cpp(sdist, Path(tmp)), Path(tmp) / "build"
        log = out.parent / "tools-build.log"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _build_step(["cmake", "-S", str(source), "-B", str(build), *generator, *TOOLS_CMAKE_ARGS], log, "configuring")
        jobs = str(os.cpu_count() or 1)
        _build_step(["cmake", "--build", str(build), "--target", *TOOLS, "-j", jobs], log, "compiling")
        staged = Path(tmp) / "bin"
        staged.mkdir()
        for tool in TOOLS:
            shutil.copy2(next(p for p in build.rglob(tool) if p.is_file() and os.access(p, os.X_OK)), staged / tool)
        os.replace(staged, out)
    return out


def _extract_llama_cpp(sdist: Path, into: Path) -> Path:
    """The sdist's vendor/llama.cpp source tree, extracted into `into`."""
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        tar.extractall(into, members=members, filter="data")
    return into / prefix


def _build_step(cmd: list[str], log: Path, what: str) -> None:
    """Run one cmake step at the lowest priority, its output appended to `log`; the build's `[n/total]` (Ninja)
    or `[ n%]` (make) lines drive a progress bar."""
    with open(log, "a") as f, progress_bar() as bar:
        f.write("$ " + " ".join(cmd) + "\n")
        task = bar.add_task(f"llama.cpp tools: {what}", total=None, info="")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: os.nice(19))
        for line in proc.stdout:
            f.write(line)
            if m := re.match(r"\[(\d+)/(\d+)\]", line):
                bar.update(task, completed=int(m[1]), total=int(m[2]))
            elif m := re.match(r"\[\s*(\d+)%\]", line):
                bar.update(task, completed=int(m[1]), total=100)
        if proc.wait() != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise TunelabError(
                f"building llama.cpp's {' and '.join(TOOLS)} failed while {what} (exit {proc.returncode}; log {log}):\n{tail}"
            )


def _run_tool(cmd: list[str], log_file: Path | None, what: str) -> None:
    """Run one of llama.cpp's tools, its output appended to `log_file`; a failure names the command and its last lines."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise TunelabError(f"llama.cpp's {Path(cmd[0]).name} failed {what} (exit {done.returncode}):\n{tail}")


def compute_imatrix(
    model: Path, calibration: Path, out: Path, *, chunks: int, chunk_tokens: int, threads: int | None = None, log_file: Path | None = None
) -> dict:
    """llama.cpp's importance matrix of GGUF `model` on the text file `calibration` (special tokens such as
    `<|im_start|>` read as the tokens the chat template means), written to `out`. Returns what it was made
    from: chunks, tokens per chunk and tokens, as llama-imatrix recorded them in the file."""
    tool = llama_tools() / "llama-imatrix"
    cmd = [str(tool), "-m", str(model), "-f", str(calibration), "-o", str(out), "-c", str(chunk_tokens), "--chunks", str(chunks)]
    # one chunk per batch (-b): with several, llama-imatrix records fewer chunks in the file than it ran
    cmd += ["-b", str(chunk_tokens), "--parse-special", "--no-ppl", "-t", str(threads or default_threads())]
    _run_tool(cmd, log_file, f"on {calibration}")
    if not Path(out).is_file():
        raise TunelabError(f"llama.cpp's llama-imatrix wrote no {out} (log: {log_file})")
    meta = gguf_metadata(out)
    count, size = meta.get("imatrix.chunk_count"), meta.get("imatrix.chunk_size")
    return {"chunks": count, "chunk_tokens": size, "tokens": count * size if count and size else None}


def quantize_with_imatrix(
    src: Path, dst: Path, qtype: str, imatrix: Path, *, threads: int | None = None, log_file: Path | None = None
) -> Path:
    """Quantize a (f16) GGUF to llama.cpp type `qtype` (q4_k_m, q4_k_s, iq4_xs, q3_k_m) with the importance
    matrix `imatrix`, by llama.cpp's llama-quantize (atomic)."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tool = llama_tools() / "llama-quantize"
    try:
        _run_tool(
            [str(tool), "--imatrix", str(imatrix), str(src), str(tmp), qtype.upper(), str(threads or default_threads())],
            log_file,
            f"on {src}",
        )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
