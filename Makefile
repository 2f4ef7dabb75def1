# One-command setup: `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := data/synthetic
DEMO_OUT := runs/demo

.PHONY: venv test demo demo-ms demo-evidence bench gpu-check clean-demo

venv: $(STAMP)

# Reinstall only when a requirements file changed.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m engine.demo single --data $(DATA) --out $(DEMO_OUT)

demo-ms: $(STAMP)
	$(PY) -m engine.demo multi --data $(DATA)_ms --out $(DEMO_OUT)_ms

# hyperpose against effposenet over three paired seeds, with baselines and corruptions (about 15 min on 2 cores).
demo-evidence: $(STAMP)
	$(PY) -m engine.demo evidence --data $(DATA) --out $(DEMO_OUT)_evidence

bench: $(STAMP)
	$(PY) bench/bench_single_scene.py
	$(PY) bench/bench_multi_scene.py

# Every CUDA path in one prepared run with a Markdown report (runs/gpu_check/report.md); one line without CUDA.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

clean-demo:
	rm -rf $(DEMO_OUT) $(DEMO_OUT)_ms $(DEMO_OUT)_evidence
