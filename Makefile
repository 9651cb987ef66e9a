# fitcycle — make setup | make run | make test
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PORT ?= 8000

.PHONY: setup run train-demo test lint typecheck pytest bench clean

UI := api/ui
UI_STAMP := $(UI)/node_modules/.installed
CHROMIUM := /usr/bin/chromium

setup: $(STAMP) $(FASHION_MNIST) $(UI_STAMP)

# The web UI's pinned front-end packages (package-lock.json), fetched from the npm registry; served from
# node_modules, never committed, nothing fetched at run time.
$(UI_STAMP): $(UI)/package.json $(UI)/package-lock.json
	npm ci --prefix $(UI) --no-audit --no-fund --silent
	@touch $(UI_STAMP)

# Debian's Chromium for the browser tests only (Playwright drives it through executable_path; its own browser
# downloads cannot work here).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null; \
	else \
	  echo "Chromium is missing: run 'sudo apt-get install chromium'" >&2; exit 1; \
	fi

# Idempotent: the venv is made once, and reinstalled only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# animal-mnist's declared dependencies (tensorflow) are not needed: its data files are all we read.
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	@touch $(STAMP)

# Real Fashion-MNIST images for tests and the quick start, from Debian's package (no download at run time).
$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; \
	fi

# The main job on the embedded default: `fitcycle serve` (API + one worker, SQLite, local store, filesystem
# broker under data/fitcycle) with a demo project: a real dataset uploaded and a fine-tune job queued on it.
run: setup
	$(BIN)/fitcycle serve --data-dir data/fitcycle --port $(PORT) --demo

# The engine alone, no server: the demo's data and recipe (cli/serve.py DEMO_JOB), then predict.
train-demo: setup
	$(BIN)/fitcycle sample-data fashion-mnist data/fashion-mnist --per-class 500 --size 28
	$(BIN)/fitcycle train data/fashion-mnist --from-folder --arch resnet18 --pretrained none --size 28 --bs 128 \
	  --freeze-epochs 0 --epochs 5 --lr 1e-2 --no-augment --valid-pct 0.2 --seed 42 --out runs/quickstart
	$(BIN)/fitcycle predict runs/quickstart/export data/fashion-mnist/sneaker/0000.png data/fashion-mnist/bag/0000.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup $(CHROMIUM)
	$(BIN)/pytest -q --durations=15

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/engine_overhead.py
	PYTHONPATH=. $(BIN)/python bench/queue_latency.py
	PYTHONPATH=. $(BIN)/python bench/predict_latency.py
	PYTHONPATH=. $(BIN)/python bench/segmentation_throughput.py
	PYTHONPATH=. $(BIN)/python bench/ui_pages.py

clean:
	rm -rf runs data .pytest_cache .mypy_cache .ruff_cache
