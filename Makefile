# diffpolicy: `make demo` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup test test-all demo bench bench-noprop data-fmnist clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) data-fmnist

# Fashion-MNIST IDX files from Debian's package, when we are root and they are missing.
data-fmnist:
	@if [ ! -d $(FMNIST_DIR) ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	fi

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

# Benchmarks print tables; each script in benchmarks/ is standalone.
bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# NoProp table (docs/noprop.md) in the background; rerunning resumes where it stopped.
bench-noprop: setup
	@mkdir -p runs/noprop
	nohup $(VENV)/bin/diffpolicy-noprop $(NOPROP_ARGS) > runs/noprop/bench.log 2>&1 &
	@echo "NoProp benchmark running in the background: tail -f runs/noprop/bench.log; table: runs/noprop/results.md"

clean-venv:
	rm -rf $(VENV)
