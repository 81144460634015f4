"""model.onnx for the onnx backend (ONNX Runtime: TensorRT or CUDA on a Jetson, the CPU anywhere).

Two routes; the manifest records which one made the file (manifest.model["onnx"]):

  from the bundle's int8 model.tflite  tf2onnx's TFLite front end turns the TFLite model's int8
                                       tensors into QuantizeLinear / DequantizeLinear pairs (QDQ) with
                                       the same scales and zero points, so the ONNX model computes what
                                       the device's TFLite model computes. The only route for a bundle
                                       whose Keras model is gone. TFLite's int8 activations are
                                       asymmetric (non-zero zero points), which TensorRT's int8 does not
                                       take (how TensorRT handles such a graph was not tried here).
  from the float Keras model           Keras's own ONNX export (tf2onnx underneath), then static int8 QDQ
                                       by onnxruntime.quantization on the same calibration images and
                                       edge.preprocess as the TFLite conversion: symmetric int8
                                       activations, per-channel symmetric int8 weights, MinMax ranges,
                                       the scheme TensorRT's explicit quantization takes.

Both get a dynamic batch dimension where the graph allows it (checked by running it), and opset 17,
the newest TensorRT 8.5 (JetPack 5) parses.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.tflite_export import tensor_specs
from edge.bundle import ONNX_MODEL, Bundle, write_bundle
from edge.native_log import TENSORFLOW_NOISE, held_stderr
from edge.runtime.onnx import (
    EMBEDDING_OUTPUT_KEY,
    EMBEDDING_SCALE_KEY,
    EMBEDDING_ZERO_POINT_KEY,
    OUTPUT_SCALE_KEY,
    OUTPUT_ZERO_POINT_KEY,
    SCORES_OUTPUT_KEY,
    OnnxModel,
)

OPSET = 17
QDQ_SETTINGS = {
    "method": "static post-training quantization, QDQ format (onnxruntime.quantization.quantize_static)",
    "activations": "int8, per-tensor, symmetric (zero point 0, as TensorRT requires), MinMax ranges from the calibration set",
    "weights": "int8 storage with a 7-bit range (reduce_range), per-channel, symmetric",
    "preprocessing": "onnxruntime.quantization.shape_inference.quant_pre_process (ONNX shape inference)",
}


@dataclass
class OnnxExport:
    data: bytes
    record: dict  # what manifest.model["onnx"] says of it


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _tools(*dists: str) -> dict:
    return {d: _version(d) for d in dists}


def activation_zero_points(model) -> dict:
    """How many QuantizeLinear nodes quantize with a zero point of 0 (what TensorRT's int8 needs)."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:  # tf2onnx also writes scales and zero points as Constant nodes
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    zero = total = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            total += 1
            zp = consts.get(node.input[2]) if len(node.input) > 2 else None
            zero += zp is None or not np.any(zp)
    return {"quantize_nodes": total, "zero_point_0": zero, "tensorrt_int8_ready": total > 0 and zero == total}


def _with_dynamic_batch(model) -> tuple[bytes, bool]:
    """The model with its batch dimension named "N" if a batch of 3 then gives the three single-image
    answers; else as it was (the backend then runs a batch one image at a time)."""
    import onnx

    static = model.SerializeToString()
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "N"
    dynamic = model.SerializeToString()
    try:
        onnx.checker.check_model(model)
        runner = OnnxModel(dynamic)
        x = np.random.default_rng(0).integers(0, 256, (3, *runner.input_shape), dtype=np.uint8)
        together = runner.run(x)
        alone = np.concatenate([runner.run(x[i : i + 1]) for i in range(3)])
    except Exception:  # a reshape or a static shape inside the graph: keep batch 1
        return static, False
    return (dynamic, True) if np.array_equal(together, alone) else (static, False)


def _metadata(model, values: dict) -> None:
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else repr(value)


def _mark_outputs(model, embedding: bool) -> None:
    """Name the scores output (and the embedding output of a rejecting model) in the metadata, as
    edge.runtime.onnx reads them: the first output of the model is the scores, the second the embedding."""
    names = [o.name for o in model.graph.output]
    _metadata(model, {SCORES_OUTPUT_KEY: names[0], **({EMBEDDING_OUTPUT_KEY: names[1]} if embedding else {})})


def from_tflite(tflite: bytes, made_from: str, n_classes: int | None = None) -> OnnxExport:
    """The int8 TFLite model as an ONNX QDQ model, with which output is the scores (and which the
    embedding, for a rejecting bundle) and their scales and zero points in the metadata."""
    import tf2onnx

    _, out, embedding = tensor_specs(tflite, n_classes)
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        with held_stderr(TENSORFLOW_NOISE):  # the TFLite interpreter tf2onnx opens prints its INFO lines
            model, _ = tf2onnx.convert.from_tflite(str(path), opset=OPSET)
    # tf2onnx keeps the TFLite tensor names for the outputs
    _metadata(model, {SCORES_OUTPUT_KEY: out.name})
    if out.scale:
        _metadata(model, {OUTPUT_SCALE_KEY: out.scale, OUTPUT_ZERO_POINT_KEY: out.zero_point})
    if embedding is not None:
        _metadata(model, {EMBEDDING_OUTPUT_KEY: embedding.name})
        if embedding.scale:
            _metadata(
                model, {EMBEDDING_SCALE_KEY: embedding.scale, EMBEDDING_ZERO_POINT_KEY: embedding.zero_point}
            )
    export = _export(
        model,
        "tf2onnx from_tflite",
        route={
            "route": "tflite",
            "made_from": made_from,
            "made_from_sha256": hashlib.sha256(tflite).hexdigest(),
            "tool": {**_tools("tf2onnx", "onnx", "onnxruntime"), "converter": "tf2onnx.convert.from_tflite"},
        },
        quantization={
            "method": "the TFLite model's own int8 quantization, as QuantizeLinear/DequantizeLinear (QDQ)",
            "scheme": "as model.tflite: int8 weights per-channel, int8 activations per-tensor asymmetric",
        },
        io={
            "input": {
                "dtype": "uint8",
                "layout": "NHWC",
                "note": "the TFLite model's uint8 input (scale 1, zero point 0)",
            },
            "output": {"dtype": out.dtype, "scale": out.scale, "zero_point": out.zero_point},
            "embedding_output": embedding is not None,
        },
    )
    if not export.record["quantization"]["tensorrt_int8_ready"]:
        export.record["tensorrt_note"] = (
            "asymmetric activations (non-zero zero points), as in every TFLite int8 model: TensorRT's int8 "
            "takes symmetric Q/DQ only. For TensorRT int8, re-export from the float Keras model "
            "(edge export BUNDLE --format onnx --run RUN_DIR, or edge quantize ... --format onnx)"
        )
    return export


class _Images:
    """onnxruntime's CalibrationDataReader over uint8 images, one float32 image per call."""

    def __init__(self, name: str, images: np.ndarray):
        self.name, self.images, self.i = name, images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1][None].astype(np.float32)}


def float_onnx(model) -> bytes:
    """The float Keras model (0-255 RGB in, probabilities out; and the embedding, when it has a second
    output) as ONNX, by tf2onnx from the model's traced function.

    Keras's own `model.export(format="onnx")` (and tf2onnx on the same function) leaves constants the
    function captured from outside, such as a Normalization layer's mean and variance, as extra graph
    inputs nobody feeds; they become initializers here, with the values the function captured."""
    import tensorflow as tf
    import tf2onnx
    from onnx import numpy_helper

    shape = (None, *(int(d) for d in model.inputs[0].shape[1:]))
    signature = (tf.TensorSpec(shape, tf.float32, name="image"),)
    function = tf.function(lambda image: model(image, training=False))
    traced = function.get_concrete_function(*signature)
    captured = {
        placeholder.name: value.numpy()
        for placeholder, value in zip(traced.graph.internal_captures, traced.captured_inputs, strict=True)
        if value.dtype != tf.resource
    }

    with held_stderr(TENSORFLOW_NOISE):
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    for node in [i for i in proto.graph.input if i.name != "image"]:
        if node.name not in captured:
            raise ValueError(
                f"the exported model has an input {node.name!r} that is neither the image nor a constant"
            )
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(captured[node.name]), node.name))
        proto.graph.input.remove(node)
    return proto.SerializeToString()


def quantize_qdq(float_model: bytes, images: np.ndarray) -> bytes:
    """Static int8 QDQ of a float ONNX model, ranges from `images` (uint8, edge.preprocess)."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="onnx-qdq-") as tmp:
        tmp = Path(tmp)
        (tmp / "float.onnx").write_bytes(float_model)
        # ONNX's own shape inference covers a CNN; the symbolic one (for transformers) would need sympy.
        quant_pre_process(str(tmp / "float.onnx"), str(tmp / "prepared.onnx"), skip_symbolic_shape=True)
        name = (
            onnxruntime.InferenceSession(str(tmp / "prepared.onnx"), providers=["CPUExecutionProvider"])
            .get_inputs()[0]
            .name
        )
        quantize_static(
            str(tmp / "prepared.onnx"),
            str(tmp / "int8.onnx"),
            _Images(name, images),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: x86 CPUs without VNNI compute int8 dot products with VPMADDUBSW, whose 16-bit
            # intermediate sums saturate with full-range weights (onnxruntime's reduce_range, "for better
            # accuracy on non-VNNI CPUs"). Measured on the differential model, 400 val images: top-1
            # agreement with float 95.3 % with 8-bit weights, 99.3 % with 7-bit; the same QDQ model run
            # unfused (float Q/DQ, no int8 kernels) agrees on 99.5 %. TensorRT takes the scales as they are.
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
            # Ranges are merged every 32 images, so 1000 calibration images do not hold every activation.
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "CalibMaxIntermediateOutputs": 32,
            },
        )
        return (tmp / "int8.onnx").read_bytes()


def from_keras(
    model, images: np.ndarray, calibration: dict, made_from: str, made_from_sha256: str | None
) -> OnnxExport:
    """The float Keras model -> float ONNX -> static int8 QDQ on the calibration images. A model with
    two outputs (convert.tflite_export.with_embedding) keeps both: scores, then the embedding."""
    import onnx

    quantized = onnx.load_from_string(quantize_qdq(float_onnx(model), images))
    _mark_outputs(quantized, embedding=len(model.outputs) > 1)
    return _export(
        quantized,
        "keras export + onnxruntime.quantization",
        route={
            "route": "keras",
            "made_from": made_from,
            "made_from_sha256": made_from_sha256,
            "tool": {
                **_tools("keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime"),
                "converter": "tf2onnx.convert.from_function (the Keras model's traced function, captured constants frozen)",
            },
        },
        quantization=QDQ_SETTINGS,
        io={
            "calibration": calibration,
            "input": {
                "dtype": "float32",
                "layout": "NHWC",
                "note": "0-255 RGB as float; the device casts edge.preprocess's uint8",
            },
            "output": {"dtype": "float32"},
            "embedding_output": len(model.outputs) > 1,
        },
    )


def _export(model, producer: str, route: dict, quantization: dict, io: dict) -> OnnxExport:
    """What both routes do last, and their record in one order: the file, how it was made (`route`),
    the opset, the quantization with the zero points counted on the graph, then `io` (the input and
    outputs, and the calibration of the Keras route), and whether the batch is dynamic."""
    model.producer_name = f"edge-hemato ({producer})"
    zero_points = activation_zero_points(model)
    data, dynamic = _with_dynamic_batch(model)
    record = {
        "file": ONNX_MODEL,
        **route,
        "opset": OPSET,
        "quantization": {**quantization, **zero_points},
        **io,
        "dynamic_batch": dynamic,
    }
    return OnnxExport(data, record)


def add_to_bundle(bundle_dir: str | Path, export: OnnxExport, fidelity: list[dict] | None = None) -> Bundle:
    """Write model.onnx beside model.tflite, its sha256 in manifest.files and its record in
    manifest.model["onnx"] (where devices on an older edge still read the manifest), and load it back."""
    bundle = Bundle.load(bundle_dir)
    record = dict(export.record)
    if fidelity:
        record["fidelity"] = fidelity
    bundle.manifest.model["onnx"] = record
    write_bundle(bundle.path, {ONNX_MODEL: export.data}, bundle.manifest)
    return Bundle.load(bundle.path)  # verify what we wrote, as the device will
