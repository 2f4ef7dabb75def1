# One-command setup: `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := data/synthetic
DEMO_OUT := runs/demo

.PHONY: venv test test-fast lint format demo demo-ms demo-evidence bench gpu-check clean-demo

venv: $(STAMP)

# Reinstall only when a requirements file changed.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The whole suite on two worker processes of one thread each (the CI command).
TEST_JOBS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS) --dist worksteal

test: $(STAMP)
	$(PYTEST) tests

# Everything but the end-to-end tests marked slow, with fewer property-test examples.
test-fast: $(STAMP)
	HYPOTHESIS_PROFILE=fast $(PYTEST) -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: $(STAMP)
	$(PY) -m engine.reproduction.demo single --data $(DATA) --out $(DEMO_OUT)

demo-ms: $(STAMP)
	$(PY) -m engine.reproduction.demo multi --data $(DATA)_ms --out $(DEMO_OUT)_ms

# hyperpose against effposenet over three paired seeds, with baselines and corruptions (about 15 min on 2 cores).
demo-evidence: $(STAMP)
	$(PY) -m engine.reproduction.demo evidence --data $(DATA) --out $(DEMO_OUT)_evidence

bench: $(STAMP)
	$(PY) bench/bench_single_scene.py
	$(PY) bench/bench_multi_scene.py

# Every CUDA path in one prepared run with a Markdown report (runs/gpu_check/report.md); one line without CUDA.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

clean-demo:
	rm -rf $(DEMO_OUT) $(DEMO_OUT)_ms $(DEMO_OUT)_evidence
