"""Keras model -> TFLite bytes (int8 / float16 / float32) and -> a bundle in the foundation format."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from edge.bundle import CPU_MODEL, Manifest, TensorSpec, write_bundle
from edge.preprocess import PreprocessSpec

PRECISIONS = ("int8", "float16", "float32")


def to_tflite(model, precision: str = "int8", representative: Callable[[], Iterable] | np.ndarray | None = None) -> bytes:
    """Convert a Keras model that takes 0-255 RGB to a TFLite flatbuffer.

    int8 is full-integer post-training quantization (TFLITE_BUILTINS_INT8 only, per-channel weights,
    uint8 input and output), which needs `representative`: uint8 images, or a generator of
    [batch] lists, from the calibration set (never the evaluation split).
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs representative (calibration) images")
        if isinstance(representative, np.ndarray):
            images = representative

            def representative():  # noqa: F811 - the converter wants a zero-argument generator
                for img in images:
                    yield [img[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def tensor_specs(tflite_bytes: bytes) -> tuple[TensorSpec, TensorSpec]:
    """Input and output TensorSpec (with quantization) read from the converted model."""
    from edge.runtime.cpu_tflite import import_runtime

    interp = import_runtime().interpreter_class(model_content=tflite_bytes)
    specs = []
    for d in (interp.get_input_details()[0], interp.get_output_details()[0]):
        scale, zero = d.get("quantization", (0.0, 0))
        specs.append(
            TensorSpec(
                shape=[int(v) for v in d["shape"]],
                dtype=np.dtype(d["dtype"]).name,
                scale=float(scale) if scale else None,
                zero_point=int(zero) if scale else None,
            )
        )
    return specs[0], specs[1]


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
