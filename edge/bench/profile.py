"""`--profile`: where each op of the model runs, and per-op timings where the runtime exposes them.

What ai_edge_litert 2.3 (and tflite_runtime / tf.lite) expose to Python: the graph's nodes through
`Interpreter._get_ops_details()`, including the DELEGATE nodes that replaced a partition of the
graph. They expose no profiler: the per-op timer lives in the C++ `benchmark_model
--enable_op_profiling=true` and in LiteRT's C API, not in the Python wheel. So this reports
placement (which ops the delegate took, which stayed on the interpreter's CPU kernels, which ran
on the Edge TPU) from the graph itself, and says plainly that per-op times are not available.
"""

from __future__ import annotations

from collections import Counter

from edge.bench.staged import StagedModel

TIMINGS_UNAVAILABLE = (
    "per-op timings are not exposed by {runtime} {version} to Python (no profiler API); use TFLite's "
    "C++ benchmark_model --enable_op_profiling=true for them. Placement below is read from the graph."
)


def op_placement(ops: list[dict], delegate_name: str = "delegate") -> list[dict]:
    """Each original op with `runs_on`: 'edgetpu', the delegate's name, or 'cpu' (interpreter kernels).

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
            placed[index] = "edgetpu" if "edgetpu" in op["op_name"].lower() else delegate_name
            stack.extend(int(t) for t in op["inputs"] if int(t) >= 0 and int(t) not in boundary)
    rows = []
    for op in real:
        where = placed.get(op["index"])
        if where is None:
            where = "edgetpu" if "edgetpu" in op["op_name"].lower() else "cpu"
        rows.append({"index": int(op["index"]), "op": op["op_name"], "runs_on": where})
    return rows


def summarize_placement(rows: list[dict]) -> list[dict]:
    """One row per (op type, where it runs), most frequent first."""
    counts = Counter((r["op"], r["runs_on"]) for r in rows)
    return [{"op": op, "runs_on": where, "count": n} for (op, where), n in counts.most_common()]


def profile(model: StagedModel, description: dict) -> dict:
    runtime = f"{description.get('runtime', '?')}"
    note = TIMINGS_UNAVAILABLE.format(runtime=runtime, version=description.get("runtime_version", "?"))
    get_ops = getattr(model.interpreter, "_get_ops_details", None) if model.split else None
    if get_ops is None:
        return {
            "op_timings": None,
            "note": f"{note} This backend does not expose its graph either.",
            "ops": [],
        }
    rows = op_placement(get_ops(), str(description.get("delegate") or "delegate"))
    on_cpu = [r for r in rows if r["runs_on"] == "cpu"]
    return {
        "op_timings": None,
        "note": note,
        "ops_total": len(rows),
        "ops_on_cpu_kernels": len(on_cpu),
        "placement": summarize_placement(rows),
        "ops": rows,
    }
