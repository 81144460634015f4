"""The golden check: does this machine compute what the machine that made the bundle computed?

A model is quantized, measured and given its thresholds on a host (x86-64); it runs on a Raspberry Pi
(arm64), where OpenCV and the int8 kernels may take other paths (docs/device.md). So every bundle
carries a few inputs the project makes itself (edge.synthetic, fixed seeds: no patient data), stored
as arrays in `golden.npz` (hashed in manifest.files), and in the manifest's `golden` section (sealed in
the model, edge/contract.py) the View each is cut with, the sha256 of its preprocessed bytes and the
model's top class; the file holds the model's raw int8 outputs too.

On the device (`edge doctor`, and `edge run` at start: every preprocessing, one inference):
- preprocessing must be byte-exact. Version 2 is bit-exact on every CPU; version 1 only on the CPU
  and OpenCV that made the bundle, and elsewhere the check can only say so.
- outputs must lie within `tolerance_steps` quantization steps of the stored ones, with the same top
  class. int8 kernels round differently on other CPUs, so a few steps is normal; a broken delegate or
  the wrong model is tens to hundreds of steps off. Classifier inputs are chosen where TFLite's two
  kernel sets agree (TOLERANCE_STEPS) and the top class is recorded only where it leads by more than
  twice the tolerance, so it cannot flip on a device that passes the output check.
"""

from __future__ import annotations

import hashlib
import io
import platform
from dataclasses import dataclass

import cv2
import numpy as np

from edge import preprocess_exact as exact
from edge.errors import BundleError
from edge.manifest import Golden, GoldenInput, GoldenView, Manifest
from edge.preprocess import View, preprocess
from edge.runtime import open_backend
from edge.runtime.tflite import TFLiteModel
from edge.synthetic import CLASSES, render_cell, render_field

GOLDEN_FILE = "golden.npz"
# Quantization steps (1/256 of a probability for the committed classifiers). int8 kernels are not
# bit-exact across CPUs (docs/device.md): on the same preprocessed bytes, arm64's class scores differed
# from x86-64's by up to 61 steps on real cells, and TFLite's two kernel sets (XNNPACK and the
# built-in ones) on one x86-64 machine by up to 39 on synthetic cells. Where the two kernel sets agree
# within a step, arm64 agreed with x86-64 to the step (7 of 7 inputs): classifier inputs are chosen
# there, and 4 steps leave room for kernels that round otherwise again (a real Cortex-A76's dot-product
# kernels). Where no input is so insensitive (a detector's score map and box distances), the bound is
# twice the two kernel sets' own difference on the chosen inputs.
TOLERANCE_STEPS = 4
FLOAT_STEPS = 256  # a float model's outputs are compared in steps of 1/256, as a uint8 softmax's
CELLS = 4  # classifier inputs chosen from the synthetic cells, besides the two geometry cases

OK, FAILED, WARN, NONE = "ok", "failed", "warn", "none"


@dataclass(frozen=True)
class Case:
    """One candidate input: a BGR image and the View it is cut with."""

    name: str
    image: np.ndarray
    view: View


def classifier_cases() -> list[Case]:
    """Synthetic white cells of every class at several sizes (below, near and above the model's
    side), a field cut at a red-cell scale around its centre cell, and a non-square image."""
    sizes = (128, 160, 200, 240, 180)
    cells = [
        Case(
            f"cell-{name}-{i}", render_cell(name, np.random.default_rng(2600 + i), size=sizes[i % 5]), View()
        )
        for i, name in enumerate(CLASSES * 2)
    ]
    field, _ = render_field(np.random.default_rng(2650), 640, 480, "lobed", n_extra=1)
    window = View(centre=(320.0, 240.0), rbc_px=80.0, background=exact.background_bgr(field))
    wide, _ = render_field(np.random.default_rng(2651), 400, 300, "round")
    return [Case("field-window", field, window), Case("wide", wide, View()), *cells]


def detector_cases() -> list[Case]:
    """Synthetic microscope fields with none to three white cells, and a single-cell image."""
    fields = [
        Case(f"field-{n}", render_field(np.random.default_rng(2700 + n), 640, 480, n_extra=n)[0], View())
        for n in (1, 2, 3, 0)
    ]
    single, _ = render_field(np.random.default_rng(2710), 360, 363, "round")
    return [*fields, Case("single-cell", single, View())]


def digest(tensor: np.ndarray) -> str:
    """The sha256 of a preprocessed tensor's bytes."""
    return hashlib.sha256(np.ascontiguousarray(tensor).tobytes()).hexdigest()


def _view_record(view: View) -> GoldenView:
    return GoldenView(
        centre=None if view.centre is None else [float(v) for v in view.centre],
        rbc_px=view.rbc_px,
        background=None if view.background is None else [int(v) for v in view.background],
    )


def view_of(record: GoldenView) -> View:
    return View(
        centre=None if record.centre is None else tuple(record.centre),
        rbc_px=record.rbc_px,
        background=None if record.background is None else tuple(record.background),
    )


def roles(manifest: Manifest) -> list[str]:
    """The model outputs the golden file holds: a classifier's class scores, a detector's two maps."""
    return ["heatmap", "boxes"] if manifest.task == "detector" else ["scores"]


def _output_index(outputs, manifest: Manifest, role: str) -> int:
    """Which of the model's outputs (edge.runtime.tflite.TensorInfo) plays `role`."""
    if role in ("heatmap", "boxes"):
        name = getattr(manifest.detector, role)
        return next(i for i, t in enumerate(outputs) if t.name == name)
    if manifest.output.name:
        named = [i for i, t in enumerate(outputs) if t.name == manifest.output.name]
        if named:
            return named[0]
    return next(i for i, t in enumerate(outputs) if t.shape[-1] == len(manifest.labels))


def _codes(runner, i: int) -> np.ndarray:
    """Output `i` of the model's last run, first image: its raw integer codes, or for a float model
    its values in steps of 1 / FLOAT_STEPS."""
    raw = runner.raw(i)[0]
    return raw if runner.outputs[i].quantized else raw.astype(np.float64) * FLOAT_STEPS


def _margin(codes: np.ndarray) -> int:
    top2 = np.sort(codes.astype(np.int64).ravel())[-2:]
    return int(top2[1] - top2[0])


def _steps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference between two outputs, in whole steps."""
    return int(np.ceil(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() - 1e-9))


@dataclass
class _Row:
    case: Case
    sha: str  # of the preprocessed bytes
    outputs: dict[str, np.ndarray]  # role -> codes, by XNNPACK (what devices run)
    spread: int  # steps between XNNPACK's outputs and TFLite's built-in kernels' outputs


def _run(model: bytes, manifest: Manifest) -> tuple[list[_Row], dict[str, np.ndarray]]:
    """Every candidate input through the preprocessing and the model, with both of TFLite's int8
    kernel sets; and each output's quantization (scale, zero point)."""
    fast = TFLiteModel(bytes(model), threads=1)
    builtin = TFLiteModel(bytes(model), threads=1, xnnpack=False)
    indices = {role: _output_index(fast.outputs, manifest, role) for role in roles(manifest)}
    rows = []
    for case in detector_cases() if manifest.task == "detector" else classifier_cases():
        tensor = preprocess(case.image, manifest.preprocess, view=case.view)
        outs = []
        for runner in (fast, builtin):
            runner.set_input(tensor[None])
            runner.invoke()
            outs.append({role: _codes(runner, i) for role, i in indices.items()})
        spread = max(_steps(outs[0][role], outs[1][role]) for role in indices)
        rows.append(_Row(case, digest(tensor), outs[0], spread))
    quantization = {}
    for role, i in indices.items():
        t = fast.outputs[i]
        quantization[role] = np.array(
            (t.scale, t.zero_point) if t.quantized else (1 / FLOAT_STEPS, 0), np.float64
        )
    return rows, quantization


def _chosen_cells(rows: list[_Row]) -> list[_Row]:
    """CELLS of the synthetic cells, in their order: first those whose outputs the two kernel sets
    agree on within a step (where the int8 rounding is free to differ, another CPU's kernels differ
    too: docs/device.md), then by the lead of their top class."""
    ranked = sorted(rows, key=lambda r: (r.spread > 1, r.spread, -_margin(r.outputs["scores"])))
    return sorted(ranked[:CELLS], key=rows.index)


def make(model: bytes, manifest: Manifest, floor: int = TOLERANCE_STEPS) -> tuple[Golden, bytes]:
    """The golden section and file for `model` (the .tflite bytes) under `manifest`'s preprocessing,
    computed here, by the device's own preprocessing and runtime layer. The tolerance is `floor`
    steps, or twice the largest difference between the two kernel sets on the chosen inputs."""
    rows, quantization = _run(model, manifest)
    if manifest.task != "detector":  # the two geometry cases, then the cells
        rows = rows[:2] + _chosen_cells(rows[2:])
    tolerance = max(floor, 2 * max(r.spread for r in rows))
    arrays = {f"{role}.quantization": q for role, q in quantization.items()}
    inputs = []
    for row in rows:
        arrays[f"{row.case.name}.image"] = row.case.image
        arrays.update({f"{row.case.name}.{role}": codes for role, codes in row.outputs.items()})
        scores = row.outputs.get("scores")
        top = int(np.argmax(scores)) if scores is not None and _margin(scores) > 2 * tolerance else None
        view = _view_record(row.case.view)
        inputs.append(GoldenInput(name=row.case.name, view=view, preprocessed=row.sha, top=top))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    golden = Golden(
        file=GOLDEN_FILE,
        inputs=inputs,
        outputs=list(quantization),
        tolerance_steps=tolerance,
        made_on=platform.machine(),
        opencv=cv2.__version__,
    )
    return golden, buffer.getvalue()


# --- the check, on the device ----------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenResult:
    """What the check found, in one line (`detail`) and in numbers, for `edge doctor`, the daemon's
    start, its page and /api/status."""

    bundle: str
    state: str  # ok | failed | warn (version 1 on another machine) | none (no golden check)
    detail: str
    identical: int = 0  # golden inputs preprocessed byte for byte
    inputs: int = 0
    compared: int = 0  # inputs whose outputs were compared
    max_steps: int | None = None  # the largest output difference, in quantization steps


def read_arrays(bundle, golden: Golden) -> dict[str, np.ndarray]:
    """The golden file's arrays, from bytes checked against the manifest's sha256 (the bytes that were
    hashed are the bytes used)."""
    path = bundle.path / golden.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the golden file ({exc.strerror or exc})") from None
    if hashlib.sha256(data).hexdigest() != bundle.manifest.files.get(golden.file):
        raise BundleError(f"{path}: sha256 differs from the manifest's: tampered or corrupt")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: not a golden file ({exc})") from None
    missing = [i.name for i in golden.inputs if f"{i.name}.image" not in arrays]
    if missing:
        raise BundleError(f"{path}: holds no image for the golden input(s) {', '.join(missing)}")
    return arrays


def _device_codes(backend, tensor: np.ndarray, manifest: Manifest, arrays: dict) -> dict[str, np.ndarray]:
    """The backend's outputs for one preprocessed tensor, as the model's raw integer codes."""
    backend.set_input(tensor[None])
    backend.invoke()
    if manifest.task == "detector":
        named = backend.named_outputs()
        floats = {role: named[getattr(manifest.detector, role)] for role in ("heatmap", "boxes")}
    else:
        floats = {"scores": backend.scores()}
    codes = {}
    for role, values in floats.items():
        scale, zero = arrays[f"{role}.quantization"]
        codes[role] = np.asarray(values, np.float64)[0] / scale + zero
    return codes


def _compare_outputs(backend, tensors, golden: Golden, manifest: Manifest, arrays, chosen: list[int]):
    """(largest difference in steps, names of inputs whose top class moved) over `chosen` inputs."""
    worst, moved = 0, []
    for i in chosen:
        item = golden.inputs[i]
        codes = _device_codes(backend, tensors[i], manifest, arrays)
        for role in golden.outputs:
            expected = arrays[f"{item.name}.{role}"]
            got = codes[role].reshape(expected.shape)
            if np.issubdtype(expected.dtype, np.integer):  # a quantized model's own codes
                got = np.rint(got)
            worst = max(worst, _steps(got, expected))
        if item.top is not None and int(np.argmax(codes["scores"])) != item.top:
            moved.append(item.name)
    return worst, moved


def check(bundle, backend=None, lab=None, inferences: int | None = None) -> GoldenResult:
    """Run `bundle`'s golden check on this machine: every input's preprocessing, and the outputs of
    the first `inferences` inputs whose preprocessing matched (None: all) on `backend` (the one the
    caller runs; opened on the CPU when None). `lab` is the caller's LAB strategy (same bytes)."""
    name = bundle.path.name
    golden = bundle.manifest.golden
    if golden is None:
        return GoldenResult(name, NONE, "no golden check in this bundle: re-make it (scripts/remake_v2.py)")
    spec, arrays = bundle.preprocess_spec, read_arrays(bundle, golden)
    tensors = [
        preprocess(arrays[f"{i.name}.image"], spec, view=view_of(i.view), lab=lab) for i in golden.inputs
    ]
    same = [digest(t) == i.preprocessed for t, i in zip(tensors, golden.inputs, strict=True)]
    n, k = len(same), sum(same)
    here = f"{platform.machine()} with OpenCV {cv2.__version__}"
    there = f"{golden.made_on} with OpenCV {golden.opencv}"
    problems, warning = [], None
    if spec.version == 1 and here != there:  # nothing here can tell a fault from version 1's drift
        warning = (
            f"preprocessing version 1 is not bit-exact across CPUs (made on {there}, this is {here}; "
            f"{k} of {n} golden inputs identical here): re-make the bundle with version 2 (scripts/remake_v2.py)"
        )
    elif k < n:
        problems.append(f"preprocessing gives other bytes than on {there} for {n - k} of {n} golden inputs")
    onnx = backend is not None and backend.name == "onnx"  # the golden outputs are model.tflite's
    chosen = [] if onnx else [i for i, ok in enumerate(same) if ok][:inferences]
    worst = None
    if chosen:
        own = backend is None
        if own:
            backend = open_backend(bundle)
        try:
            worst, moved = _compare_outputs(backend, tensors, golden, bundle.manifest, arrays, chosen)
        finally:
            if own:
                backend.close()
        if worst > golden.tolerance_steps:
            problems.append(f"outputs differ by up to {worst} steps (tolerance {golden.tolerance_steps})")
        if moved:
            problems.append(f"the top class differs on {', '.join(moved)}")
    counts = dict(identical=k, inputs=n, compared=len(chosen), max_steps=worst)
    if problems:
        detail = (
            f"golden check FAILED on {here}: {'; '.join(problems)}: this machine does not compute "
            f"what {golden.made_on} computed for this bundle; do not trust its results"
        )
        return GoldenResult(name, FAILED, detail, **counts)
    if chosen:
        outputs = (
            f"outputs of {len(chosen)} within {worst} step(s) of {golden.made_on}'s "
            f"(tolerance {golden.tolerance_steps}), top class equal"
        )
    else:
        outputs = "outputs not compared" + (" (the golden outputs are model.tflite's)" if onnx else "")
    if warning:
        return GoldenResult(name, WARN, f"{warning}; {outputs}", **counts)
    detail = f"{k} of {n} golden inputs preprocessed byte for byte (version {spec.version}); {outputs}"
    return GoldenResult(name, OK, detail, **counts)
