"""`--profile`: where each op of the model runs, and per-op timings where the runtime exposes them.

What ai_edge_litert 2.3 (and tflite_runtime / tf.lite) expose to Python: the graph's nodes through
`Interpreter._get_ops_details()`, including the DELEGATE nodes that replaced a partition of the
graph. They expose no profiler: the per-op timer lives in the C++ `benchmark_model
--enable_op_profiling=true` and in LiteRT's C API, not in the Python wheel. So this reports
placement (which ops the delegate took, which stayed on the interpreter's CPU kernels, which ran
on the Edge TPU) from the graph itself, with each op's multiply-accumulates counted from the tensor
shapes (which ops carry the arithmetic), and says plainly that per-op times are not available.
"""

from __future__ import annotations

import numpy as np

TIMINGS_UNAVAILABLE = (
    "per-op timings are not exposed by {runtime} {version} to Python (no profiler API); use TFLite's "
    "C++ benchmark_model --enable_op_profiling=true for them. Placement below is read from the graph."
)


EDGETPU, CPU_DELEGATE, CPU_BUILTIN = "edgetpu", "cpu/xnnpack", "cpu/builtin"


def op_placement(ops: list[dict]) -> list[dict]:
    """Each original op with `runs_on`: 'edgetpu' (the compiler's edgetpu-custom-op), 'cpu/xnnpack'
    (in a partition of TFLite's default CPU delegate) or 'cpu/builtin' (the interpreter's own kernels).
    On an Edge TPU, every op that is not 'edgetpu' is a CPU fallback.

    A DELEGATE node replaces a partition; its ops are those reached walking back from the node's
    outputs to its inputs through the tensors' producers.
    """
    real = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op["index"] for op in real for t in op["outputs"] if int(t) >= 0}
    by_index = {op["index"]: op for op in real}
    placed: dict[int, str] = {}
    for node in ops:
        if node["op_name"] != "DELEGATE":
            continue
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            index = producer.get(stack.pop())
            if index is None or index in placed:
                continue
            op = by_index[index]
            placed[index] = EDGETPU if "edgetpu" in op["op_name"].lower() else CPU_DELEGATE
            stack.extend(int(t) for t in op["inputs"] if int(t) >= 0 and int(t) not in boundary)
    rows = []
    for op in real:
        where = placed.get(op["index"])
        if where is None:
            where = EDGETPU if "edgetpu" in op["op_name"].lower() else CPU_BUILTIN
        rows.append({"index": int(op["index"]), "op": op["op_name"], "runs_on": where})
    return rows


def op_macs(op: dict, shapes: dict[int, list[int]]) -> int:
    """Multiply-accumulates of a conv / depthwise / fully-connected op from its tensor shapes (else 0).

    A static count, not a timing: it says which ops carry the arithmetic, which is what dominates
    invoke() on a CPU when no profiler is available.
    """
    name = op["op_name"]
    inputs = [int(t) for t in op["inputs"]]
    if (
        name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
        or len(inputs) < 2
        or not op["outputs"].size
    ):
        return 0
    out, weights = shapes.get(int(op["outputs"][0])), shapes.get(inputs[1])
    if not out or not weights:
        return 0
    n_out = int(np.prod(out))
    if name == "CONV_2D":  # weights: out_ch x kh x kw x in_ch
        return n_out * int(np.prod(weights[1:]))
    if name == "DEPTHWISE_CONV_2D":  # weights: 1 x kh x kw x channels
        return n_out * int(weights[1] * weights[2])
    return n_out * int(weights[-1])  # FULLY_CONNECTED: out x in


def summarize_placement(rows: list[dict]) -> list[dict]:
    """One row per (op type, where it runs) with its share of the model's MACs, heaviest first."""
    groups: dict[tuple[str, str], dict] = {}
    for r in rows:
        g = groups.setdefault(
            (r["op"], r["runs_on"]), {"op": r["op"], "runs_on": r["runs_on"], "count": 0, "macs": 0}
        )
        g["count"] += 1
        g["macs"] += r.get("macs", 0)
    total = sum(g["macs"] for g in groups.values()) or 1
    for g in groups.values():
        g["macs_share"] = round(g["macs"] / total, 4)
    return sorted(groups.values(), key=lambda g: (-g["macs"], -g["count"], g["op"]))


def profile(model, description: dict) -> dict:
    """`model`: the backend's edge.runtime.tflite.TFLiteModel, or None for a backend without one."""
    runtime = f"{description.get('runtime', '?')}"
    note = TIMINGS_UNAVAILABLE.format(runtime=runtime, version=description.get("runtime_version", "?"))
    if runtime == "onnxruntime":  # it has a profiler; the bench does not drive it (yet)
        note = (
            "per-op timings of onnxruntime: not collected by edge bench; onnxruntime writes them with "
            "SessionOptions.enable_profiling (or onnxruntime_perf_test -p)."
        )
    get_ops = getattr(model.interpreter, "_get_ops_details", None) if model is not None else None
    if get_ops is None:
        return {
            "op_timings": None,
            "note": f"{note} This backend does not expose its graph either.",
            "ops": [],
        }
    ops = get_ops()
    rows = op_placement(ops)
    shapes = {int(t["index"]): [int(v) for v in t["shape"]] for t in model.interpreter.get_tensor_details()}
    by_index = {int(op["index"]): op for op in ops}
    for r in rows:
        r["macs"] = op_macs(by_index[r["index"]], shapes)
    return {
        "op_timings": None,
        "note": note,
        "ops_total": len(rows),
        "ops_on_edgetpu": sum(r["runs_on"] == EDGETPU for r in rows),
        "ops_on_cpu_xnnpack": sum(r["runs_on"] == CPU_DELEGATE for r in rows),
        "ops_on_cpu_builtin": sum(r["runs_on"] == CPU_BUILTIN for r in rows),
        "macs_total": sum(r["macs"] for r in rows),
        "placement": summarize_placement(rows),
        "ops": rows,
    }
