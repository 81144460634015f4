"""Read a .tflite flatbuffer into plain dataclasses: ops in execution order, tensors, options.

Uses the flatbuffer schema module that ships with LiteRT (or TensorFlow), so it needs no
interpreter and sees what the interpreter hides: shape signatures, constant buffers, builtin
options and per-channel quantization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.contract import tflite_schema


@dataclass
class Tensor:
    index: int
    name: str
    dtype: str
    shape: list[int]
    shape_signature: list[int]
    constant: bool
    n_scales: int  # 0: not quantized, 1: per-tensor, >1: per-channel
    data: np.ndarray | None = None  # small constant int8/uint8/int32 data (axes, paddings, shapes), else None


@dataclass
class Op:
    index: int
    name: str  # BuiltinOperator name, e.g. CONV_2D
    version: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    options: object = None  # the schema's *OptionsT object, or None
    custom: str | None = None

    def option(self, attr: str, default=None):
        return getattr(self.options, attr, default) if self.options is not None else default


@dataclass
class Graph:
    ops: list[Op]
    tensors: list[Tensor]
    inputs: list[Tensor]
    outputs: list[Tensor]
    subgraphs: int = 1
    dtype_names: dict = field(default_factory=dict)


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def read_graph(tflite_bytes: bytes) -> Graph:
    schema = tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    op_names = _names(schema.BuiltinOperator)
    type_names = _names(schema.TensorType)
    sub = model.subgraphs[0]
    tensors = []
    for i, t in enumerate(sub.tensors):
        buf = model.buffers[t.buffer] if t.buffer is not None and t.buffer < len(model.buffers) else None
        raw = getattr(buf, "data", None)
        constant = raw is not None and len(raw) > 0
        dtype = type_names.get(t.type, str(t.type)).lower()
        data = None
        if constant and dtype in ("int32", "int8", "uint8") and len(raw) <= 65536:
            data = np.frombuffer(bytes(bytearray(raw)), dtype=np.dtype(dtype))
        q = t.quantization
        scales = getattr(q, "scale", None) if q is not None else None
        shape = [int(v) for v in (t.shape if t.shape is not None else [])]
        signature = [int(v) for v in t.shapeSignature] if t.shapeSignature is not None else list(shape)
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        tensors.append(
            Tensor(i, name, dtype, shape, signature, constant, len(scales) if scales is not None else 0, data)
        )
    ops = []
    for i, op in enumerate(sub.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        ins = [tensors[j] for j in (op.inputs if op.inputs is not None else []) if j >= 0]
        outs = [tensors[j] for j in (op.outputs if op.outputs is not None else []) if j >= 0]
        ops.append(
            Op(
                i,
                op_names.get(builtin, f"OP_{builtin}"),
                int(code.version or 1),
                ins,
                outs,
                op.builtinOptions,
                custom,
            )
        )
    return Graph(
        ops=ops,
        tensors=tensors,
        inputs=[tensors[j] for j in sub.inputs],
        outputs=[tensors[j] for j in sub.outputs],
        subgraphs=len(model.subgraphs),
    )


def per_channel_ops(graph: Graph) -> dict[str, str]:
    """Op type -> "per-channel" / "per-tensor": how its constant int8 weights are quantized."""
    found: dict[str, set] = {}
    for op in graph.ops:
        for t in op.inputs:
            if t.constant and t.dtype == "int8":
                found.setdefault(op.name, set()).add("per-channel" if t.n_scales > 1 else "per-tensor")
    return {name: "/".join(sorted(kinds)) for name, kinds in sorted(found.items())}
