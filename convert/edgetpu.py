"""Edge TPU pre-flight: will this int8 TFLite model map onto the Coral Edge TPU, and how far?

Checks the documented requirements (coral.ai/docs/edgetpu/models-intro, "Model requirements" and
"Supported operations"), op by op in execution order:
  - every activation tensor int8/uint8 (constants may also be int32: biases, shapes, axes);
  - static tensor sizes (no -1 in any shape signature, batch included);
  - at most 3 dimensions larger than 1 (only the innermost three);
  - the op is in the supported list and meets that entry's known limitations.
The compiler makes one Edge TPU segment from the start of the graph and stops at the first op it
cannot map: that op and everything after it run on the CPU, even ops that are supported. So the
verdict is "N of M ops map; from op K (its type and why) on, the rest runs on the CPU".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from convert.tflite_graph import Graph, Op, read_graph

SOURCE = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
_INT8 = ("int8", "uint8")


def _no_fused_activation(op: Op) -> list[str]:
    act = op.option("fusedActivationFunction", 0)
    return [] if not act else [f"fused activation (code {act}) is not supported on this op"]


def _same_dilation(op: Op) -> list[str]:
    h, w = op.option("dilationHFactor", 1), op.option("dilationWFactor", 1)
    return [] if h == w else [f"dilation differs in x ({w}) and y ({h})"]


def _axes(op: Op, rank: int, index: int = 1) -> list[int] | None:
    if len(op.inputs) <= index or op.inputs[index].data is None:
        return None
    return [int(a) % max(rank, 1) for a in np.ravel(op.inputs[index].data)]


def _not_batch_reduction(op: Op) -> list[str]:
    rank = len(op.inputs[0].shape)
    axes = _axes(op, rank)
    if axes is None:
        return ["reduction axes are not a constant"]
    return ["reduces over the batch dimension"] if 0 in axes else []


def _mean(op: Op) -> list[str]:
    reasons = _not_batch_reduction(op)
    rank = len(op.inputs[0].shape)
    axes = _axes(op, rank) or []
    if rank and (rank - 1) in axes and op.inputs[0].shape[-1] % 4:
        reasons.append(f"z-reduction over {op.inputs[0].shape[-1]} channels (must be a multiple of 4)")
    return reasons


def _pad(op: Op) -> list[str]:
    pads = op.inputs[1].data if len(op.inputs) > 1 else None
    if pads is None:
        return ["paddings are not a constant"]
    return ["pads the batch dimension"] if np.any(np.reshape(pads, (-1, 2))[0]) else []


def _axis_not_batch(op: Op) -> list[str]:
    axis = op.option("axis", 0)
    if op.name == "SPLIT":
        axes = _axes(op, len(op.inputs[1].shape), index=0)
        axis = axes[0] if axes else 0
    return ["operates along the batch dimension"] if axis == 0 else []


def _concatenation(op: Op) -> list[str]:
    reasons = _no_fused_activation(op)
    consts = [t for t in op.inputs if t.constant]
    if consts and (len(op.inputs) != 2 or any(t.data is None or np.any(t.data) for t in consts)):
        reasons.append("a constant input is allowed only as the all-zero second of exactly 2 inputs")
    return reasons


def _fully_connected(op: Op) -> list[str]:
    reasons = []
    if op.option("weightsFormat", 0):
        reasons.append("non-default weights format")
    out = op.outputs[0].shape if op.outputs else []
    if sum(d > 1 for d in out) > 1:
        reasons.append(f"output {out} is not one-dimensional")
    return reasons


def _softmax(op: Op) -> list[str]:
    shape = op.inputs[0].shape
    size = int(np.prod(shape)) if shape else 0
    if sum(d > 1 for d in shape) > 1 or size > 16000:
        return [f"input {shape}: only a 1-D input of at most 16,000 elements"]
    return []


def _strided_slice(op: Op) -> list[str]:
    reasons = []
    strides = op.inputs[3].data if len(op.inputs) > 3 else None
    if strides is None or np.any(strides != 1):
        reasons.append("strides other than 1")
    if op.option("ellipsisMask", 0) or op.option("newAxisMask", 0):
        reasons.append("ellipsis or new-axis mask")
    return reasons


def _prelu(op: Op) -> list[str]:
    alpha = op.inputs[1].shape if len(op.inputs) > 1 else []
    return (
        [] if sum(d > 1 for d in alpha[:-1]) == 0 else ["alpha must vary along the innermost dimension only"]
    )


# BuiltinOperator name -> (documented limitation, checker or None). From the Coral table cited above.
SUPPORTED = {
    "ADD": ("", None),
    "AVERAGE_POOL_2D": ("No fused activation function.", _no_fused_activation),
    "CONCATENATION": (
        "No fused activation; a constant input only as an all-zero second of 2 inputs.",
        _concatenation,
    ),
    "CONV_2D": ("Same dilation in x and y.", _same_dilation),
    "DEPTHWISE_CONV_2D": ("Same dilation in x and y.", _same_dilation),
    "EXPAND_DIMS": ("", None),
    "FULLY_CONNECTED": ("Default weights format only; output tensor one-dimensional.", _fully_connected),
    "L2_NORMALIZATION": ("", None),
    "LOGISTIC": ("", None),
    "LSTM": ("Unidirectional LSTM only.", None),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("Unidirectional LSTM only.", None),
    "MAXIMUM": ("", None),
    "MAX_POOL_2D": ("No fused activation function.", _no_fused_activation),
    "MEAN": ("No reduction in batch dimension; a z-reduction needs a multiple of 4 channels.", _mean),
    "MINIMUM": ("", None),
    "MUL": ("", None),
    "PACK": ("No packing in batch dimension.", _axis_not_batch),
    "PAD": ("No padding in batch dimension.", _pad),
    "PRELU": ("Alpha varies along the innermost dimension only.", _prelu),
    "QUANTIZE": ("", None),
    "REDUCE_MAX": ("Cannot operate on the batch dimension.", _not_batch_reduction),
    "REDUCE_MIN": ("Cannot operate on the batch dimension.", _not_batch_reduction),
    "RELU": ("", None),
    "RELU6": ("", None),
    "RELU_N1_TO_1": ("", None),
    "RESHAPE": ("Certain reshapes might not be mapped for large tensor sizes.", None),
    "RESIZE_BILINEAR": ("3-D input/output; may stay on CPU for some sizes to avoid precision loss.", None),
    "RESIZE_NEAREST_NEIGHBOR": (
        "3-D input/output; may stay on CPU for some sizes to avoid precision loss.",
        None,
    ),
    "RSQRT": ("", None),
    "SLICE": ("", None),
    "SOFTMAX": ("1-D input tensor with at most 16,000 elements.", _softmax),
    "SPACE_TO_DEPTH": ("", None),
    "SPLIT": ("No splitting in batch dimension.", _axis_not_batch),
    "SQUARED_DIFFERENCE": ("", None),
    "SQUEEZE": ("", None),
    "STRIDED_SLICE": ("All strides 1; no ellipsis or new-axis mask.", _strided_slice),
    "SUB": ("", None),
    "SUM": ("Cannot operate on the batch dimension.", _not_batch_reduction),
    "TANH": ("", None),
    "TRANSPOSE": ("", None),
    "TRANSPOSE_CONV": ("", None),
}


def _tensor_reasons(op: Op) -> list[str]:
    reasons = []
    for t in op.inputs + op.outputs:
        if t.constant:
            if t.dtype not in (*_INT8, "int32"):
                reasons.append(f"constant tensor '{t.name}' is {t.dtype}")
            continue
        if t.dtype not in _INT8:
            reasons.append(f"tensor '{t.name}' is {t.dtype}, not int8/uint8")
        if any(d < 0 for d in t.shape_signature):
            reasons.append(f"tensor '{t.name}' has a dynamic shape {t.shape_signature}")
        if sum(d > 1 for d in t.shape) > 3:
            reasons.append(f"tensor '{t.name}' {t.shape} has more than 3 dimensions larger than 1")
    return reasons


@dataclass
class OpVerdict:
    index: int
    op: str
    version: int
    mappable: bool
    reasons: list[str] = field(default_factory=list)
    note: str = ""


def check_op(op: Op) -> OpVerdict:
    if op.name not in SUPPORTED:
        what = f"custom op {op.custom}" if op.custom else op.name
        return OpVerdict(
            op.index, op.name, op.version, False, [f"{what} is not in the Edge TPU's supported operations"]
        )
    note, checker = SUPPORTED[op.name]
    reasons = _tensor_reasons(op) + (checker(op) if checker else [])
    return OpVerdict(op.index, op.name, op.version, not reasons, reasons, note if not checker else "")


@dataclass
class Preflight:
    ops: list[OpVerdict]
    subgraphs: int = 1

    @property
    def first_cpu(self) -> OpVerdict | None:
        return next((v for v in self.ops if not v.mappable), None)

    @property
    def mapped(self) -> int:
        first = self.first_cpu
        return len(self.ops) if first is None else first.index

    @property
    def fully_mappable(self) -> bool:
        return self.first_cpu is None and self.subgraphs == 1

    def verdict(self) -> str:
        n, m = len(self.ops), self.mapped
        if self.fully_mappable:
            return f"pre-flight: all {n} ops map to the Edge TPU"
        first = self.first_cpu
        if first is None:
            return f"pre-flight: {self.subgraphs} TFLite subgraphs; the Edge TPU compiler maps only the first"
        return (
            f"pre-flight: {m} of {n} ops map to the Edge TPU; from op {first.index} ({first.op}: "
            f"{first.reasons[0]}) on, the remaining {n - m} run on the CPU"
        )

    def table(self) -> list[str]:
        """Per op type, how many map and how many would run on the CPU (like the compiler's own table)."""
        first = self.first_cpu.index if self.first_cpu else len(self.ops)
        counts = Counter((v.op, v.index < first) for v in self.ops)
        lines = [f"{'Operator':<28} {'Count':>5}  Status"]
        for (name, on_tpu), count in sorted(counts.items(), key=lambda kv: (not kv[0][1], kv[0][0])):
            status = "Mapped to Edge TPU" if on_tpu else "Runs on CPU"
            lines.append(f"{name:<28} {count:5d}  {status}")
        return lines

    def unsupported(self) -> list[OpVerdict]:
        return [v for v in self.ops if not v.mappable]

    def to_dict(self) -> dict:
        first = self.first_cpu
        return {
            "ops_total": len(self.ops),
            "ops_mapped": self.mapped,
            "fully_mappable": self.fully_mappable,
            "first_cpu_op": asdict(first) if first else None,
            "unsupported_ops": [asdict(v) for v in self.unsupported()][:20],
            "op_counts": dict(Counter(v.op for v in self.ops)),
            "rules": SOURCE,
        }


def preflight(tflite_bytes: bytes) -> Preflight:
    graph: Graph = read_graph(tflite_bytes)
    return Preflight([check_op(op) for op in graph.ops], graph.subgraphs)
