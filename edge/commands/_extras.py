"""Lazy imports of the training side, with a one-line error naming the extra to install."""

from __future__ import annotations

import importlib.util

from edge.errors import MissingExtraError

# Modules the training extra provides; if any is missing, training commands cannot run.
_TRAIN_MODULES = ("tensorflow", "matplotlib", "albumentations", "imagehash", "tqdm")
# ...and `edge export` / `--format onnx` also need the ONNX tools of the train extra.
_ONNX_MODULES = ("tf2onnx", "onnx", "onnxruntime")


def require_train(command: str) -> None:
    """Raise MissingExtraError unless the 'train' extra is importable."""
    for name in _TRAIN_MODULES:
        if importlib.util.find_spec(name) is None:
            raise MissingExtraError(command, "train", name)


def require_onnx_export(command: str) -> None:
    """Raise MissingExtraError unless the train extra's ONNX tools are importable."""
    require_train(command)
    for name in _ONNX_MODULES:
        if importlib.util.find_spec(name) is None:
            raise MissingExtraError(command, "train", name)
