"""Keras model -> TFLite bytes (int8 / float16 / float32) and -> a bundle in the foundation format."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from edge.bundle import CPU_MODEL, Manifest, TensorSpec, write_bundle
from edge.preprocess import PreprocessSpec

PRECISIONS = ("int8", "float16", "float32")

# What `to_tflite(..., "int8")` does, recorded verbatim in the bundle manifest.
INT8_SETTINGS = {
    "method": "full-integer post-training quantization (TFLiteConverter, Optimize.DEFAULT)",
    "supported_ops": "TFLITE_BUILTINS_INT8",
    "inference_input_type": "uint8",
    "inference_output_type": "uint8",
    "weights": "int8, per-channel (per-axis) where the converter supports it; see per_op_weights",
    "activations": "int8, per-tensor, ranges from the representative (calibration) set",
    "bias": "int32",
    "batch": "static 1 (the Edge TPU needs static shapes; CPU runtimes resize the batch at run time)",
}


def _representative_fn(representative):
    if not isinstance(representative, np.ndarray):
        return representative
    images = representative

    def generate():  # the converter wants a zero-argument generator of [batch] lists
        for img in images:
            yield [img[None].astype(np.float32)]

    return generate


def _fixed_batch(model, batch: int):
    """The same model (shared weights) with a static batch dimension.

    `from_keras_model` on a plain Keras model leaves the batch dynamic (shape signature -1), which
    the Edge TPU compiler refuses. Wrapping it in an Input(batch_size=1) gives static shapes; the
    CPU runtimes still resize the batch at run time.
    """
    import keras

    shape = tuple(model.inputs[0].shape[1:])
    inputs = keras.Input(shape, batch_size=batch, name="image")
    return keras.Model(inputs, model(inputs), name=f"{model.name}_batch{batch}")


def make_converter(model, precision: str = "int8", representative=None, static_batch: int | None = 1):
    """The configured `tf.lite.TFLiteConverter` (also what the quantization debugger needs)."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    if static_batch:
        model = _fixed_batch(model, static_batch)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs representative (calibration) images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_fn(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter


def to_tflite(
    model,
    precision: str = "int8",
    representative: Callable[[], Iterable] | np.ndarray | None = None,
    static_batch: int | None = 1,
) -> bytes:
    """Convert a Keras model that takes 0-255 RGB to a TFLite flatbuffer.

    int8 is full-integer post-training quantization (TFLITE_BUILTINS_INT8 only, per-channel weights,
    uint8 input and output), which needs `representative`: uint8 images, or a generator of
    [batch] lists, from the calibration set (never the evaluation split). `static_batch` fixes the
    batch dimension (default 1, as the Edge TPU requires); None keeps it dynamic.
    """
    return make_converter(model, precision, representative, static_batch).convert()


def tensor_specs(tflite_bytes: bytes) -> tuple[TensorSpec, TensorSpec]:
    """Input and output TensorSpec (with quantization) read from the converted model."""
    from edge.runtime.tflite import model_io

    inputs, outputs = model_io(tflite_bytes)
    return tuple(
        TensorSpec(
            shape=list(t.shape),
            dtype=t.dtype.name,
            scale=t.scale if t.quantized else None,
            zero_point=t.zero_point if t.quantized else None,
        )
        for t in (inputs[0], outputs[0])
    )


def bundle_from_tflite(
    out_dir: str | os.PathLike,
    tflite_bytes: bytes,
    labels: list[str],
    spec: PreprocessSpec,
    **manifest_fields,
) -> Manifest:
    """Write `tflite_bytes` as a bundle; `manifest_fields` fill model/training/calibration/metrics/..."""
    inp, out = tensor_specs(tflite_bytes)
    manifest = Manifest(labels=list(labels), input=inp, output=out, preprocess=spec, **manifest_fields)
    write_bundle(out_dir, {CPU_MODEL: tflite_bytes}, manifest)
    return manifest
