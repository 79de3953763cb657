"""llama.cpp: its converter (HF folder -> GGUF), its quantizer, and a chat backend for GGUF files.

- The converter is llama.cpp's own `convert_hf_to_gguf.py` with its `conversion/` package and
  `gguf-py`. The `gguf` wheel does not carry them; the llama-cpp-python source distribution
  does. tunelab extracts them once into `<cache>/llama.cpp/<version>/` and runs the script
  with this Python as a subprocess.
- Quantizing (Q8_0, Q4_K_M) goes through `llama_cpp.llama_model_quantize`, the same C function
  llama.cpp's `llama-quantize` binary calls.
- `LlamaCppChatModel` serves a GGUF behind tunelab's ChatModel interface. It formats prompts with
  the chat template stored in the GGUF (llama-cpp-python's Jinja2ChatFormatter, the same jinja
  settings as transformers) and stops on the model's end-of-generation tokens.
"""
from __future__ import annotations

import codecs
import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from tunelab.errors import TunelabError
from tunelab.io import atomic_dir
from tunelab.paths import cache_dir

LLAMA_CPP_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
QUANT_TYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


class LlamaCppMissing(TunelabError):
    pass


def require_llama_cpp():
    """Import llama_cpp, or explain how to get it."""
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppMissing(
            f"llama-cpp-python is not installed, and GGUF export, quantization and GGUF generation need it. "
            f"Run `make setup-gguf` (builds llama-cpp-python {LLAMA_CPP_VERSION} once, about 11 minutes, and caches "
            f"the wheel in ~/.cache/tunelab/wheels), or `pip install llama-cpp-python=={LLAMA_CPP_VERSION}`. "
            f"The `merged` format works without it."
        ) from None
    return llama_cpp


def default_threads() -> int:
    return int(os.environ.get("TUNELAB_THREADS", "0")) or len(os.sched_getaffinity(0))


# ------------------------------------------------------------------ the converter
def wheel_dirs() -> list[Path]:
    """Where the llama-cpp-python wheel and sdist are cached (tunelab's cache, and the Makefile's)."""
    dirs = [cache_dir() / "wheels", Path.home() / ".cache" / "tunelab" / "wheels"]
    return list(dict.fromkeys(dirs))


def find_sdist() -> Path:
    """The llama-cpp-python source distribution: from the wheel cache, else downloaded with pip."""
    for d in wheel_dirs():
        if (d / SDIST_NAME).is_file():
            return d / SDIST_NAME
    target = wheel_dirs()[0]
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(target)]
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
            rel = m.name[len(prefix):]
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
    done = subprocess.run([sys.executable, str(script), "--print-supported-models"], capture_output=True, text=True, env=_converter_env(), timeout=300)
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
        examples = ", ".join(a for a in ["LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM", "GPT2LMHeadModel"] if a in supported)
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
    import logging

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


def gguf_metadata(path: Path) -> dict:
    """The key/value metadata of a GGUF file (strings, numbers; arrays left out), read with gguf-py."""
    from gguf import GGUFReader
    from gguf.constants import GGUFValueType

    reader = GGUFReader(str(path))
    meta = {}
    for key, field in reader.fields.items():
        if not field.types or field.types[0] == GGUFValueType.ARRAY:
            continue
        value = field.parts[field.data[0]]
        if field.types[0] == GGUFValueType.STRING:
            meta[key] = bytes(value).decode("utf-8", errors="replace")
        else:
            meta[key] = value.tolist()[0] if hasattr(value, "tolist") else value
    return meta


def disk_free(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


# ------------------------------------------------------------------ the chat backend
class LlamaCppChatModel:
    """A GGUF file served by llama.cpp behind tunelab's ChatModel interface."""

    def __init__(self, path: str | Path, n_threads: int | None = None, n_ctx: int = 4096, name: str | None = None):
        require_llama_cpp()
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from tunelab.models.load import DEFAULT_CHAT_TEMPLATE

        self.path = Path(path)
        self.name = name or self.path.stem
        threads = n_threads or default_threads()
        meta = gguf_metadata(self.path)
        trained_ctx = meta.get(f"{meta.get('general.architecture')}.context_length")
        if trained_ctx:
            n_ctx = min(n_ctx, int(trained_ctx))
        self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.tokenizer = self.llm.tokenizer()
        self.n_ctx = self.llm.n_ctx()
        self.eos_id = self.llm.token_eos()
        self.bos_id = self.llm.token_bos()
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template") or DEFAULT_CHAT_TEMPLATE
        self.formatter = Jinja2ChatFormatter(
            template=self.chat_template,
            eos_token=self._token_text(self.eos_id),
            bos_token=self._token_text(self.bos_id),
            add_generation_prompt=True,
        )
        self._lock = threading.Lock()  # one generation at a time per llama.cpp context

    def _token_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def prompt_text(self, messages: list[dict]) -> str:
        return self.formatter(messages=messages).prompt

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        # The template writes every special token itself (as transformers' apply_chat_template
        # does), so no BOS is added here: the same ids as tokenizer(text, add_special_tokens=False).
        return self.llm.tokenize(self.prompt_text(messages).encode("utf-8"), add_bos=False, special=True)

    def is_end(self, token: int) -> bool:
        import llama_cpp

        return token == self.eos_id or bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def generate_ids(self, prompt_ids: list[int], settings=None) -> Iterator[int]:
        """Token ids after `prompt_ids`, stopping at end-of-generation or max_new_tokens (greedy at temperature 0)."""
        from tunelab.models.chat import GenerationSettings

        s = settings or GenerationSettings()
        if len(prompt_ids) >= self.n_ctx:
            raise TunelabError(f"{self.path.name}: the prompt has {len(prompt_ids)} tokens, more than the context of {self.n_ctx}")
        budget = min(s.max_new_tokens, self.n_ctx - len(prompt_ids))
        greedy = not (s.temperature and s.temperature > 0)
        with self._lock:
            self.llm.reset()  # no prefix reuse: each generation starts from the same state
            self.llm.set_seed(s.seed)
            gen = self.llm.generate(
                prompt_ids, temp=0.0 if greedy else s.temperature, top_p=1.0 if greedy else s.top_p, top_k=0, min_p=0.0,
                repeat_penalty=s.repetition_penalty, reset=True,
            )
            try:
                for n, token in enumerate(gen):
                    if self.is_end(token):
                        break
                    yield token
                    if n + 1 >= budget:
                        break
            finally:
                gen.close()

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def generate(self, conversations: list[list[dict]], settings=None, batch_size: int = 8) -> list[str]:
        """One answer per conversation (llama.cpp runs them one after another; batch_size is ignored)."""
        return [self.decode(list(self.generate_ids(self.prompt_tokens(msgs), settings))).strip() for msgs in conversations]

    def stream(self, messages: list[dict], settings=None) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        started = False
        for token in self.generate_ids(self.prompt_tokens(messages), settings):
            piece = decoder.decode(self.llm.detokenize([token]))
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
