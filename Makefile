# diffpolicy: `make demo` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
# The tests run several torch processes at once (DDP, benchmark rows) on 2 cores,
# where spinning OpenMP threads slow small models 15-25x; passive waiting removes
# that.  On an idle machine it costs ~3x in training speed (docs/policy.md), so
# `make demo` and `make bench` keep torch's default; set OMP_WAIT_POLICY=PASSIVE
# yourself when the cores are shared.
test test-all: export OMP_WAIT_POLICY ?= PASSIVE
DEMO_DIR ?= runs/demo

.PHONY: setup test test-all demo bench bench-noprop gpu-check data-fmnist clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev,metaworld]"
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST IDX files from Debian's package, when we are root and they are missing.
data-fmnist:
	@if [ ! -d $(FMNIST_DIR) ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	fi

# Train the CPU default on the Push-T demos (keypoints, ~8 min on 2 idle cores), then evaluate
# it on the 500 test seeds 100000..100499 (table, eval.json, videos, final-frame grid; ~30 s).
# Re-running resumes.
demo: setup
	$(VENV)/bin/diffpolicy-train task=pusht_keypoints policy=cpu training=demo seed=0 run_dir=$(DEMO_DIR) resume=true
	$(VENV)/bin/diffpolicy-eval checkpoint=$(DEMO_DIR)/checkpoints/latest.pt n_episodes=500 output_dir=$(DEMO_DIR)/eval
	@echo "report: $(DEMO_DIR)/eval/eval.md  videos: $(DEMO_DIR)/eval/videos  plots: $(DEMO_DIR)/training.png $(DEMO_DIR)/eval/final_frames.png"

test: setup data-fmnist
	$(PY) -m pytest -q

test-all: setup data-fmnist
	$(PY) -m pytest -q -m ""

# Benchmarks print tables; each script in benchmarks/ is standalone.  BENCH_JSON_DIR=docs/results
# also writes each table with the machine (see docs/speed.md).
bench: setup data-fmnist
	@for b in benchmarks/bench_*.py; do echo "== $$b"; \
	  $(PY) $$b $(if $(BENCH_JSON_DIR),--json $(BENCH_JSON_DIR)/$$(basename $$b .py).json) || exit 1; done

# On a machine with a CUDA GPU: every model trained (and the policies evaluated) for a few
# hundred steps on the GPU beside the CPU; table and docs/results/gpu_check.json.
gpu-check: setup data-fmnist
	$(PY) benchmarks/gpu_check.py --json docs/results/gpu_check.json

# NoProp table (docs/noprop.md: the papers' comparison, two rows side by side) in the
# background; rerunning resumes where it stopped.  NOPROP_CONFIG=quick for a smoke run.
NOPROP_CONFIG ?= paper_table
bench-noprop: setup data-fmnist
	@mkdir -p runs/noprop/$(NOPROP_CONFIG)
	nohup $(VENV)/bin/diffpolicy-noprop --config $(NOPROP_CONFIG) out_dir=runs/noprop/$(NOPROP_CONFIG) \
	  $(NOPROP_ARGS) > runs/noprop/$(NOPROP_CONFIG)/bench.log 2>&1 &
	@echo "NoProp benchmark running in the background: tail -f runs/noprop/$(NOPROP_CONFIG)/bench.log;" \
	  "table: runs/noprop/$(NOPROP_CONFIG)/results.md"

clean-venv:
	rm -rf $(VENV)
