"""Keras model -> TFLite bytes (int8 / float16 / float32) and -> a bundle in the foundation format."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable

import numpy as np

from edge import golden
from edge.bundle import CPU_MODEL, Manifest, TensorSpec, write_bundle
from edge.native_log import TENSORFLOW_NOISE, held_stderr
from edge.preprocess import PreprocessSpec
from edge.runtime.tflite import model_io

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
    return convert_model(make_converter(model, precision, representative, static_batch))


# Set by the commands unless --verbose: Keras's export prints every captured tensor of the model
# ("Saved artifact at ... TensorSpec(...)", hundreds of lines for MobileNetV2) on each conversion.
QUIET = False


def convert_model(converter) -> bytes:
    """converter.convert(), with Keras's export listing kept off stdout when QUIET."""
    if not QUIET:
        return converter.convert()

    with contextlib.redirect_stdout(io.StringIO()), held_stderr(TENSORFLOW_NOISE):
        return converter.convert()


def _spec(t) -> TensorSpec:
    return TensorSpec(
        shape=list(t.shape),
        dtype=t.dtype.name,
        scale=t.scale if t.quantized else None,
        zero_point=t.zero_point if t.quantized else None,
        name=t.name,
    )


def tensor_specs(
    tflite_bytes: bytes, n_classes: int | None = None
) -> tuple[TensorSpec, TensorSpec, TensorSpec | None]:
    """Input, class-score output and (models with a second output) embedding TensorSpecs, with
    quantization and names, read from the converted model. The scores are the output with one
    value per class (`n_classes`), the embedding the other."""
    inputs, outputs = model_io(tflite_bytes)
    if len(outputs) == 1:
        return _spec(inputs[0]), _spec(outputs[0]), None
    scores = next((t for t in outputs if n_classes and t.shape[-1] == n_classes), outputs[0])
    embedding = next(t for t in outputs if t is not scores)
    return _spec(inputs[0]), _spec(scores), _spec(embedding)


def with_embedding(model, layer: str):
    """The same model (shared weights) with a second output: `layer`'s output, flattened, for rejection."""
    import keras

    try:
        features = model.get_layer(layer).output
    except ValueError:
        names = [x.name for x in model.layers][-8:]
        raise ValueError(f"no layer {layer!r} in the model (its last layers: {', '.join(names)})") from None
    if len(features.shape) > 2:
        features = keras.layers.Flatten(name="embedding_flat")(features)
    return keras.Model(model.inputs, [model.outputs[0], features], name=f"{model.name}_with_embedding")


def bundle_from_tflite(
    out_dir: str | os.PathLike,
    tflite_bytes: bytes,
    labels: list[str],
    spec: PreprocessSpec,
    extra_files: dict[str, bytes] | None = None,
    **manifest_fields,
) -> Manifest:
    """Write `tflite_bytes` (and `extra_files`, e.g. rejection statistics) as a bundle;
    `manifest_fields` fill model/training/calibration/metrics/rejection/..."""
    inp, out, embedding = tensor_specs(tflite_bytes, len(labels))
    manifest = Manifest(
        labels=list(labels), input=inp, output=out, preprocess=spec, embedding=embedding, **manifest_fields
    )
    # the golden check the device runs (edge/golden.py): computed here, by the device's own code
    manifest.golden, golden_file = golden.make(tflite_bytes, manifest)
    files = {CPU_MODEL: tflite_bytes, **(extra_files or {}), golden.GOLDEN_FILE: golden_file}
    write_bundle(out_dir, files, manifest)
    return manifest
