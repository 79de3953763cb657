"""The CPU this process runs on, read once, and every decision tunelab takes from it.

The CPU changes from machine to machine (an AMD EPYC with AVX512-BF16, an Intel Xeon with AMX,
a laptop with AVX2 only, an ARM Mac), so nothing else in tunelab reads /proc/cpuinfo or guesses
from the platform: it asks `cpu()` and uses one of the decisions below. Each is a property of
`CpuFeatures`, a plain value a test builds from any /proc/cpuinfo text it likes.

- `bf16_matmul`: bf16 autocast in training and the dtype of the matmul peak behind MFU. torch
  runs bf16 matmuls through oneDNN, which is fast only with AVX512-BF16 or AMX (and can be capped
  below them with ONEDNN_MAX_CPU_ISA, which `torch_flags` honours). Elsewhere bf16 is emulated,
  slower than fp32, so fp32 it is.
- `llama_extra_buffers`: llama.cpp's weight repacking into extra buffer types. On a CPU with AMX,
  llama.cpp 0.3.36's CPU backend repacks weights into its AMX buffer type and the first decode
  dies with a general protection fault (llama.cpp issue 20824), so tunelab turns repacking off
  there; everywhere else repacking is llama.cpp's default and stays on.
- `whole_model_compile_pays`: whether `train.compile: auto` compiles a long run. Measured with
  `bench/train_compile.py` (docs/training.md): 1.08x per step on the AMX Xeon (after attention's
  compiled backward, before bf16 frozen weights: not measured there since), 1.05x on an AVX2-only
  EPYC in fp32, and 0.98x on the AVX512-BF16 EPYC (2026-12-07), where the eager step (attention's
  compiled backward, bf16 frozen weights) already has what the whole-model compile added, and its
  81 s up front buy nothing; so not there.
- `default_threads()`: torch's and llama.cpp's threads.
- `has_cpp_compiler()`: whether torch.compile can build CPU kernels (`train.compile: auto` and the
  compiled backward of attention per example, tunelab/train/attention.py, ask it).
- `wait_until_idle()`: whether the machine is idle enough to time anything on it (the benches and a
  sweep's serving cost both ask it before measuring).
- `label`: how a bench names the CPU its figures were taken on (bench/RESULTS.md has a section
  per bench and CPU).
- `peak_rss_mib()`: this process's peak resident memory, the one figure of memory on a CPU that the
  benches, distributed training and a sweep's serving cost report.

Nothing here imports torch: serving a GGUF needs these answers without the training stack.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
X86 = {"x86_64", "amd64", "i386", "i686"}

# ONEDNN_MAX_CPU_ISA caps the instructions oneDNN (so torch's CPU matmuls) may use. The flags a
# cap takes away from torch's view, by cap name; a cap not listed here takes nothing away.
_BELOW_BF16 = frozenset({"avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "amx_fp16"})
_BELOW_AMX = frozenset({"amx_bf16", "amx_int8", "amx_tile", "amx_fp16"})
ONEDNN_CAPS = {
    "SSE41": _BELOW_BF16,
    "AVX": _BELOW_BF16,
    "AVX2": _BELOW_BF16,
    "AVX2_VNNI": _BELOW_BF16,
    "AVX2_VNNI_2": _BELOW_BF16,
    "AVX512_CORE": _BELOW_BF16,
    "AVX512_CORE_VNNI": _BELOW_BF16,
    "AVX512_CORE_BF16": _BELOW_AMX,
    "AVX512_CORE_FP16": _BELOW_AMX,
    "AVX10_1_512": _BELOW_AMX,
}
# The matmul instructions a CPU is known by, fastest first: (the name people use, its /proc/cpuinfo flag).
MATMUL_MARKS = (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16"), ("AVX2", "avx2"))


@dataclass(frozen=True)
class CpuFeatures:
    """What is known of a CPU: its architecture, model name and feature flags, and where they came from."""

    arch: str
    model: str = "unknown CPU"
    flags: frozenset[str] = frozenset()
    flags_known: bool = False
    onednn_cap: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def x86(self) -> bool:
        return self.arch.lower() in X86

    @property
    def amx(self) -> bool:
        """The chip has AMX tiles (whatever oneDNN is allowed to use)."""
        return bool(self.flags & {"amx_tile", "amx_int8", "amx_bf16"})

    @property
    def torch_flags(self) -> frozenset[str]:
        """The flags torch's oneDNN matmuls may use: `flags` less what ONEDNN_MAX_CPU_ISA caps away."""
        return self.flags - ONEDNN_CAPS.get((self.onednn_cap or "").upper(), frozenset())

    @property
    def bf16_matmul(self) -> bool:
        """bf16 autocast pays: x86 with AVX512-BF16 or AMX-BF16 that oneDNN may use."""
        return self.x86 and bool(self.torch_flags & {"avx512_bf16", "amx_bf16"})

    @property
    def peak_dtype(self) -> str:
        """The dtype of the fastest matmul here, the one MFU is quoted against."""
        return "bfloat16" if self.bf16_matmul else "float32"

    @property
    def whole_model_compile_pays(self) -> bool:
        """A long run's steps ran faster compiled whole (see the module docstring): everywhere measured but
        bf16 matmuls on AVX512-BF16 without AMX."""
        return not (self.bf16_matmul and "amx_bf16" not in self.torch_flags)

    @property
    def llama_extra_buffers(self) -> bool:
        """llama.cpp may repack weights into its extra buffer types (off on AMX CPUs: see the module docstring)."""
        return not self.amx

    @property
    def label(self) -> str:
        """The CPU as a bench names its figures: the model name and the fastest matmul instructions the chip
        has, e.g. 'Intel(R) Xeon(R) Processor (AMX)' or 'AMD EPYC (AVX512-BF16)'. Cloud machines report
        generic model names, so the instructions tell an AMX Xeon from an older one. Without any of
        them, the architecture stands in: 'unknown CPU (arm64)'."""
        best = next((name for name, flag in MATMUL_MARKS if flag in self.flags), self.arch)
        return f"{self.model} ({best})"

    def describe(self) -> str:
        """One line for logs and bench sections: the CPU and what tunelab decided from it."""
        marks = [name for name, flag in MATMUL_MARKS if flag in self.flags]
        cap = f", oneDNN capped at {self.onednn_cap}" if self.onednn_cap else ""
        features = ", ".join(marks) if self.flags_known else "features unknown"
        return (
            f"{self.model} ({self.arch}; {features}{cap}): "
            f"{'bf16' if self.bf16_matmul else 'fp32'} matmuls, llama.cpp repacking {'on' if self.llama_extra_buffers else 'off'}"
        )


def parse_cpuinfo(text: str | None, arch: str, onednn_cap: str | None = None) -> CpuFeatures:
    """CpuFeatures from /proc/cpuinfo's text (None: unreadable). Linux on x86 lists `flags`; ARM lists
    `Features` in other words, and macOS has no such file: there no flag is trusted and each
    decision falls back to what is safe everywhere (fp32 matmuls, llama.cpp's defaults)."""
    model, flags, known = "unknown CPU", frozenset(), False
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model == "unknown CPU" and value.strip():
            model = value.strip()
        elif key == "flags" and not known:
            flags, known = frozenset(value.split()), True
    notes = []
    if text is None:
        notes.append(f"{CPUINFO} is not readable here ({platform.system()}): CPU features unknown, so fp32 matmuls")
    elif arch.lower() not in X86:
        notes.append(f"a {arch} CPU: tunelab decides bf16 from x86 flags only, so fp32 matmuls here")
    elif not known:
        notes.append(f"{CPUINFO} lists no flags: CPU features unknown, so fp32 matmuls")
    return CpuFeatures(arch=arch, model=model, flags=flags, flags_known=known, onednn_cap=onednn_cap, notes=tuple(notes))


def default_threads() -> int:
    """Threads for torch and llama.cpp: TUNELAB_THREADS, else this process's share of the cores it may run on.

    torchrun sets LOCAL_WORLD_SIZE in each of the processes it starts on a machine: they share
    the cores, since two busy processes on the same cores slow each other far more than 2x.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return int(os.environ.get("TUNELAB_THREADS", "0")) or max(1, share)


@functools.cache
def has_cpp_compiler() -> bool:
    """Whether torch.compile can build CPU kernels here: inductor writes C++ and needs a compiler to build it.
    Asked once per process: attention asks it for every example of every layer."""
    return any(map(shutil.which, ("c++", "g++", "clang++")))


IDLE_LOAD = 1.0  # the 1-minute load average at or below which nothing else is running to speak of


def wait_until_idle(max_load: float = IDLE_LOAD, wait_s: float = 300.0, poll_s: float = 10.0) -> tuple[tuple[float, float, float], bool]:
    """(the load average, still busy?) once the 1-minute load is at most `max_load`, or after `wait_s`.

    Two busy processes on two cores slow each other many times over, so a speed taken beside other work
    says little. A job that just finished keeps the 1-minute load high for about a minute: waiting a
    few minutes lets measurements run one after another."""
    load = os.getloadavg()
    deadline = time.monotonic() + wait_s
    while load[0] > max_load and time.monotonic() < deadline:
        print(f"waiting for the machine to be idle: 1-minute load average {load[0]:.2f} > {max_load}", file=sys.stderr, flush=True)
        time.sleep(poll_s)
        load = os.getloadavg()
    return load, load[0] > max_load


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB. Linux: VmHWM, which starts afresh at exec; `ru_maxrss` does not
    (a child started by a 1 GiB process reports at least 1 GiB). Elsewhere ru_maxrss (bytes on macOS, KiB on others)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@functools.cache
def cpu() -> CpuFeatures:
    """This machine's CPU, read once per process."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = None
    return parse_cpuinfo(text, platform.machine() or "unknown", os.environ.get("ONEDNN_MAX_CPU_ISA"))
