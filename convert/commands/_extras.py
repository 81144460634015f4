"""Lazy imports of the training side, with a one-line error naming the extra to install."""

from __future__ import annotations

import importlib.util
import os
import warnings

from edge.errors import MissingExtraError

# Modules the training extra provides; if any is missing, training commands cannot run.
_TRAIN_MODULES = ("tensorflow", "matplotlib", "albumentations", "imagehash", "tqdm")
# ...and `edge export` / `--format onnx` also need the ONNX tools of the train extra.
_ONNX_MODULES = ("tf2onnx", "onnx", "onnxruntime")


def require_train(command: str, verbose: bool = False) -> None:
    """Raise MissingExtraError unless the 'train' extra is importable; unless `verbose`, keep
    TensorFlow's start-up chatter (CUDA probing on a CPU host, oneDNN notes, SavedModel loading)
    off the terminal: nothing in it is for the user to act on. Its warnings about our data stay."""
    for name in _TRAIN_MODULES:
        if importlib.util.find_spec(name) is None:
            raise MissingExtraError(command, "train", name)
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    # tf2onnx's TFLite front end reads the model with tf.lite.Interpreter, which warns of its own end.
    warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
    warnings.filterwarnings(
        "ignore", message="The structure of `inputs` doesn't match the expected structure"
    )
    from convert import tflite_export
    from edge.native_log import TENSORFLOW_NOISE, held_stderr

    with held_stderr(TENSORFLOW_NOISE):  # what TensorFlow prints when it loads, before its log level applies
        import tensorflow  # noqa: F401
    tflite_export.QUIET = True


def require_onnx_export(command: str, verbose: bool = False) -> None:
    """Raise MissingExtraError unless the train extra's ONNX tools are importable."""
    require_train(command, verbose)
    for name in _ONNX_MODULES:
        if importlib.util.find_spec(name) is None:
            raise MissingExtraError(command, "train", name)
