# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): requirements.txt requirements-reference.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-reference.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --output runs/demo $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.bench_backbones
	$(PY) -m benchmarks.bench_cls_train
	$(PY) -m benchmarks.bench_detector
	$(PY) -m benchmarks.bench_eval
	$(PY) -m benchmarks.bench_export

clean:
	rm -rf $(VENV) runs
