"""Editing an int8 TFLite model in place, without TensorFlow: the last FULLY_CONNECTED (the layer
`edge adapt` re-fits) read out dequantized and written back re-quantized, through the TFLite
schema's object API (the flatbuffer classes the runtime ships). Beside edge/contract.py, which
seals the manifest's contract into the same file."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.contract import FILE_IDENTIFIER, tflite_schema
from edge.errors import DataError


def _op_name(model, op) -> str:
    schema = tflite_schema()
    code = model.operatorCodes[op.opcodeIndex]
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((k for k, v in vars(schema.BuiltinOperator).items() if v == value), str(value))


_ACTIVATIONS = {0: None, 1: (0.0, np.inf), 3: (0.0, 6.0)}  # TFLite fused activation: NONE, RELU, RELU6


@dataclass
class Head:
    """The last FULLY_CONNECTED of an int8 classifier (its output goes into SOFTMAX), dequantized.

    `lead` is the FULLY_CONNECTED before it (weights, bias, activation range), dequantized, when the
    bundle's embedding is that layer's input (rejection on the pooled features) rather than this one's:
    `features` then computes this layer's input from the embedding in float."""

    weights: np.ndarray  # C x D float
    bias: np.ndarray  # C float
    weight_tensor: int
    bias_tensor: int
    logits_tensor: int
    input_scale: float
    per_channel: bool
    input_tensor: int = -1
    lead: tuple | None = None

    def features(self, embedding: np.ndarray) -> np.ndarray:
        """The last layer's input for the model's embedding output."""
        if self.lead is None:
            return np.asarray(embedding, np.float64)
        w, b, clip = self.lead
        x = np.asarray(embedding, np.float64) @ w.T + b
        return x if clip is None else np.clip(x, *clip)


def _quant(tensor) -> tuple[np.ndarray, np.ndarray]:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        raise DataError("the model's last layer is not int8-quantized: edge adapt needs a full-int8 bundle")
    return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.int64)


def _buffer_array(model, tensor, dtype) -> np.ndarray:
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        raise DataError("the model's last layer has no constant weights to re-fit")
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(tuple(tensor.shape))


def _fully_connected(model, graph, fc) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Dequantized (weights, bias) of an int8 FULLY_CONNECTED, its input scale, and whether its weights
    are quantized per channel."""
    x, w, b = (graph.tensors[int(i)] for i in fc.inputs[:3])
    x_scale, _ = _quant(x)
    w_scale, _ = _quant(w)
    w_int = _buffer_array(model, w, np.int8).astype(np.float64)
    b_int = _buffer_array(model, b, np.int32).astype(np.float64)
    per_channel = len(w_scale) == w_int.shape[0] > 1
    scales = w_scale if per_channel else np.full(w_int.shape[0], w_scale[0])
    return w_int * scales[:, None], b_int * scales * x_scale[0], float(x_scale[0]), per_channel


def read_head(model_bytes: bytes, embedding_name: str | None = None):
    """(the unpacked model, its Head): the FULLY_CONNECTED whose output feeds the SOFTMAX, and how
    the output named `embedding_name` leads to its input."""
    schema = tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    softmax = [op for op in graph.operators if _op_name(model, op) == "SOFTMAX"]
    fc = producer.get(int(softmax[0].inputs[0])) if softmax else None
    if fc is None or _op_name(model, fc) != "FULLY_CONNECTED" or len(fc.inputs) < 3 or fc.inputs[2] < 0:
        raise DataError(
            "no FULLY_CONNECTED layer with a bias before the softmax: not an edge train classifier"
        )
    _quant(graph.tensors[int(fc.outputs[0])])
    weights, bias, x_scale, per_channel = _fully_connected(model, graph, fc)
    head = Head(
        weights=weights,
        bias=bias,
        weight_tensor=int(fc.inputs[1]),
        bias_tensor=int(fc.inputs[2]),
        logits_tensor=int(fc.outputs[0]),
        input_scale=x_scale,
        per_channel=per_channel,
        input_tensor=int(fc.inputs[0]),
    )
    if embedding_name is not None:
        head.lead = _lead(model, graph, producer, head, embedding_name)
    return model, head


def _lead(model, graph, producer, head: Head, embedding_name: str):
    """None when the embedding output is the head's input; the layer before when it is that one's."""
    outputs = [int(i) for i in graph.outputs if _name(graph.tensors[int(i)].name) == embedding_name]
    if not outputs:
        raise DataError(f"the model has no output named {embedding_name!r} (the manifest's embedding)")
    source = outputs[0]
    op = producer.get(source)
    if op is not None and _op_name(model, op) in ("QUANTIZE", "DEQUANTIZE"):  # uint8 I/O wraps outputs
        source = int(op.inputs[0])
    if source == head.input_tensor:
        return None
    lead = producer.get(head.input_tensor)
    if lead is not None and _op_name(model, lead) == "FULLY_CONNECTED" and int(lead.inputs[0]) == source:
        weights, bias, _, _ = _fully_connected(model, graph, lead)
        activation = getattr(lead.builtinOptions, "fusedActivationFunction", 0)
        if activation not in _ACTIVATIONS:
            raise DataError(
                f"the layer before the last has an activation edge adapt does not know ({activation})"
            )
        return weights, bias, _ACTIVATIONS[activation]
    raise DataError("the model's embedding is neither the last layer's input nor the layer's before it")


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def write_head(
    model_bytes: bytes, weights: np.ndarray, bias: np.ndarray, logit_range: tuple[float, float]
) -> bytes:
    """The model with the last layer's weights and bias re-quantized (symmetric int8 weights, per
    channel where the converter made them so; int32 bias at input scale x weight scale) and the
    logits' int8 range set to `logit_range`."""
    import flatbuffers  # comes with the TFLite runtime's schema, as _schema() does

    model, head = read_head(model_bytes)
    graph = model.subgraphs[0]
    w_t, b_t, out_t = (graph.tensors[i] for i in (head.weight_tensor, head.bias_tensor, head.logits_tensor))
    weights, bias = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    if weights.shape != head.weights.shape or bias.shape != head.bias.shape:
        raise ValueError(f"new head {weights.shape} / {bias.shape} does not fit {head.weights.shape}")
    peak = np.abs(weights).max(axis=1) if head.per_channel else np.full(len(weights), np.abs(weights).max())
    scales = np.maximum(peak, 1e-8) / 127.0
    w_int = np.clip(np.rint(weights / scales[:, None]), -127, 127).astype(np.int8)
    b_int = np.rint(bias / (scales * head.input_scale)).astype(np.int64)
    if np.abs(b_int).max() >= 2**31:
        raise ValueError("re-fitted bias does not fit int32")
    model.buffers[w_t.buffer].data = np.frombuffer(w_int.tobytes(), np.uint8)
    model.buffers[b_t.buffer].data = np.frombuffer(b_int.astype(np.int32).tobytes(), np.uint8)
    w_t.quantization.scale = (scales if head.per_channel else scales[:1]).astype(np.float32)
    w_t.quantization.zeroPoint = np.zeros(len(w_t.quantization.scale), np.int64)
    b_t.quantization.scale = ((scales if head.per_channel else scales[:1]) * head.input_scale).astype(
        np.float32
    )
    b_t.quantization.zeroPoint = np.zeros(len(b_t.quantization.scale), np.int64)
    lo, hi = min(0.0, logit_range[0]), max(0.0, logit_range[1])
    scale = max(hi - lo, 1e-6) / 255.0
    out_t.quantization.scale = np.array([scale], np.float32)
    out_t.quantization.zeroPoint = np.array([int(np.clip(np.rint(-128 - lo / scale), -128, 127))], np.int64)
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def logit_range_of(model_bytes: bytes) -> tuple[float, float]:
    """The float range the logits' int8 tensor can hold now."""
    model, head = read_head(model_bytes)
    scale, zero = _quant(model.subgraphs[0].tensors[head.logits_tensor])
    return float((-128 - zero[0]) * scale[0]), float((127 - zero[0]) * scale[0])
