"""`edge doctor [BUNDLE]`: can this machine classify? Runtimes, XNNPACK, Edge TPU, cameras, CPU and disk."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from edge.commands._options import json_flag
from edge.errors import EdgeError
from edge.runtime import BACKENDS
from edge.runtime.tflite import RUNTIME_CHOICES, RUNTIMES, import_runtime, usable_cores

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"

# Run in a child process: the runtime logs "Created TensorFlow Lite XNNPACK delegate" once per process, to fd 2.
_XNNPACK_PROBE = """
import sys
from edge.runtime.tflite import import_runtime
rt = import_runtime(sys.argv[2])
it = rt.interpreter_class(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
it.invoke()
"""


@dataclass
class Check:
    area: str
    status: str
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> list[Check]:
    major = int(np.__version__.split(".")[0])
    return [
        Check(
            "python",
            OK if sys.version_info >= (3, 10) else FAIL,
            f"Python {platform.python_version()} on {platform.machine()} ({platform.system()})",
        ),
        Check("numpy", OK, f"NumPy {np.__version__}" + (" (2.x)" if major >= 2 else "")),
    ]


def check_runtimes(preference: str) -> list[Check]:
    checks = []
    numpy2 = int(np.__version__.split(".")[0]) >= 2
    dists = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime", "tensorflow": "tensorflow"}
    usable = []
    for name in RUNTIMES:
        dist_version = _version(dists[name])
        if dist_version is None and name == "tensorflow":
            dist_version = _version("tensorflow-cpu")
        if dist_version is None:
            checks.append(Check(f"runtime {name}", INFO, "not installed"))
            continue
        if name == "tensorflow" and preference != "tensorflow" and usable:
            # Importing TensorFlow takes seconds and is never needed when another runtime works.
            checks.append(
                Check(
                    f"runtime {name}", INFO, f"{dist_version} installed (not imported: {usable[0]} is used)"
                )
            )
            continue
        try:
            rt = import_runtime(name)
        except ImportError as exc:
            detail = str(exc).split("(", 1)[-1].rstrip(")").split(". Install")[0]
            if name == "tflite-runtime" and numpy2:
                detail = (
                    f"{dist_version} installed but fails beside NumPy {np.__version__}: its last release (2.14) "
                    "was built for NumPy 1. Use ai-edge-litert (pip install '.[device]') or pin numpy<2"
                )
            checks.append(Check(f"runtime {name}", WARN, detail))
            continue
        usable.append(name)
        checks.append(Check(f"runtime {name}", OK, f"{rt.version} imports"))
    if preference != "auto" and preference not in usable:
        checks.append(Check("runtime", FAIL, f"--runtime {preference} was asked for but cannot be imported"))
    elif not usable:
        checks.append(
            Check("runtime", FAIL, "no TFLite runtime imports: pip install '.[device]' (ai-edge-litert)")
        )
    else:
        chosen = preference if preference != "auto" else usable[0]
        checks.append(Check("runtime", OK, f"using {chosen}"))
    return checks


def check_xnnpack(model: Path | None, preference: str) -> Check:
    if model is None:
        return Check("xnnpack", INFO, "give a BUNDLE to check that XNNPACK is applied to its model")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _XNNPACK_PROBE, str(model), preference],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("xnnpack", WARN, f"could not run the probe ({exc})")
    if "XNNPACK delegate" in proc.stderr:
        return Check("xnnpack", OK, "the runtime applies the XNNPACK delegate to the model")
    if proc.returncode != 0:
        return Check("xnnpack", WARN, "probe failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
    return Check(
        "xnnpack", WARN, "the runtime did not report XNNPACK: inference runs on the slower built-in kernels"
    )


def check_edgetpu(wanted: bool, device: str | None, root: str = "/") -> list[Check]:
    from edge.runtime.edgetpu import EDGETPU_LIBRARY, probe

    found = probe(root)
    miss = FAIL if wanted else INFO
    checks = []
    if found.devices:
        for d in found.devices:
            extra = ""
            if d.usb_speed_mbps:
                extra = f", {d.usb_speed_mbps} Mbit/s" + (
                    " (USB2: use a USB3 port)" if d.usb_speed_mbps < 5000 else ""
                )
            if d.node:
                extra += f", {d.node}" + (
                    "" if d.accessible else " (not accessible to this user: apex group / udev rule)"
                )
            status = OK if (d.accessible is not False and (d.usb_speed_mbps or 5000) >= 5000) else WARN
            checks.append(Check("edgetpu device", status, f"{d.name} at {d.where}{extra}"))
    else:
        checks.append(
            Check(
                "edgetpu device", miss, "none found (USB 1a6e:089a / 18d1:9302, PCIe 1ac1:089a, /dev/apex_*)"
            )
        )
    if found.library:
        checks.append(Check("libedgetpu", OK, found.library))
    else:
        checks.append(
            Check(
                "libedgetpu",
                miss,
                f"{EDGETPU_LIBRARY} not found: libedgetpu1-std from Coral's apt repository",
            )
        )
    return checks


def check_onnx(wanted: bool) -> list[Check]:
    """onnxruntime, the execution providers it has, and why a GPU one is missing (edge.runtime.onnx_providers)."""
    from edge.runtime.onnx_providers import PROVIDERS, SHORT, probe, why_missing

    try:
        import onnxruntime
    except ImportError:
        return [
            Check(
                "onnxruntime",
                FAIL if wanted else INFO,
                "not installed (the onnx backend needs it): pip install '.[jetson]', on a Jetson NVIDIA's "
                "onnxruntime-gpu wheel (docs/device.md)",
            )
        ]
    found = probe()
    available = list(onnxruntime.get_available_providers())
    checks = [
        Check("onnxruntime", OK, f"{found.wheel or 'onnxruntime'} {onnxruntime.__version__} imports"),
        Check(
            "onnx providers",
            OK,
            ", ".join(SHORT.get(p, p) for p in available)
            + (f"  (Jetson: {found.jetpack})" if found.jetpack else ""),
        ),
    ]
    for short in ("tensorrt", "cuda"):
        why = why_missing(PROVIDERS[short], available, found)
        checks.append(Check(f"onnx {short}", INFO if why else OK, why or "available"))
    return checks


def check_cameras() -> list[Check]:
    videos = sorted(str(p) for p in Path("/dev").glob("video*"))
    checks = [
        Check("camera", OK if videos else INFO, ", ".join(videos) if videos else "no /dev/video* devices")
    ]
    if importlib.util.find_spec("picamera2") is None:
        checks.append(
            Check(
                "picamera2",
                INFO,
                "not importable (Raspberry Pi OS: sudo apt install python3-picamera2, "
                "venv with --system-site-packages)",
            )
        )
    else:
        checks.append(Check("picamera2", OK, f"importable ({_version('picamera2') or 'system package'})"))
    return checks


def check_preprocessing() -> Check:
    """Which LAB path `edge run` will take: all give the same bytes, at different speeds."""
    from edge import labtables

    why = labtables.not_here()
    if why:
        return Check(
            "preprocessing",
            INFO,
            f"LAB lookup tables off ({why}): cv2.cvtColor, the slower path with "
            "the same bytes (docs/bench.md)",
        )
    return Check(
        "preprocessing", OK, "LAB lookup tables on (~90 MB, built at `edge run` / `edge bench` start)"
    )


def check_system() -> list[Check]:
    checks = [Check("cpu", INFO, f"{usable_cores()} usable core(s) of {os.cpu_count()}")]
    governors = sorted(
        {
            p.read_text().strip()
            for p in Path("/sys/devices/system/cpu").glob("cpu*/cpufreq/scaling_governor")
            if p.is_file()
        }
    )
    if governors:
        slow = [g for g in governors if g in ("powersave", "ondemand", "conservative")]
        checks.append(
            Check(
                "cpu governor",
                WARN if slow else OK,
                ", ".join(governors)
                + (
                    " (for steady timings: echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)"
                    if slow
                    else ""
                ),
            )
        )
    else:
        checks.append(Check("cpu governor", INFO, "not exposed here (VM or container)"))
    free = shutil.disk_usage(Path.cwd()).free / 2**30
    checks.append(
        Check(
            "disk",
            OK if free >= 1 else WARN,
            f"{free:.1f} GiB free in {Path.cwd()}"
            + ("" if free >= 1 else ": results and flagged images need space"),
        )
    )
    return checks


def _run_once(bundle, backend: str, runtime: str, device: str | None):
    """(backend, what one image costs): a classifier classifies, a detector's model runs."""
    if bundle.is_detector:
        from edge.detect.detector import Detector

        opened = Detector.open(bundle, backend, runtime=runtime, device=device).backend
        return opened, opened.run
    from edge.predict import Classifier

    classifier = Classifier.open(bundle, backend, runtime=runtime, device=device)
    return classifier.backend, classifier.classify_tensors


def check_golden(bundle, backend) -> Check:
    """The bundle's golden check (edge/golden.py) on the backend that would run it."""
    from edge import golden

    try:
        result = golden.check(bundle, backend)
    except EdgeError as exc:
        return Check("golden", FAIL, str(exc))
    status = {golden.OK: OK, golden.WARN: WARN, golden.FAILED: FAIL, golden.NONE: INFO}[result.state]
    return Check("golden", status, result.detail)


def check_bundle(path: str, backend: str, runtime: str, device: str | None) -> list[Check]:
    from edge.bundle import Bundle

    try:
        bundle = Bundle.load(path)
    except EdgeError as exc:
        return [Check("bundle", FAIL, str(exc))]
    m = bundle.manifest
    checks = [
        Check(
            "bundle",
            OK,
            f"{path}: {len(m.labels)} labels, {m.model.get('architecture', '?')} "
            f"{m.model.get('precision', '')}, input {m.input.shape} {m.input.dtype}",
        )
    ]
    try:
        opened, call = _run_once(bundle, backend, runtime, device)
        x = np.zeros((1, *opened.input_shape), np.uint8)
        call(x)  # first call packs weights
        t0 = time.perf_counter()
        for _ in range(5):
            call(x)
        ms = (time.perf_counter() - t0) / 5 * 1000
    except EdgeError as exc:
        return [*checks, Check("bundle runs", FAIL, str(exc))]
    except Exception as exc:  # the runtime's own error: say it, do not crash the doctor
        return [*checks, Check("bundle runs", FAIL, f"{type(exc).__name__}: {exc}")]
    info = opened.describe()
    checks.append(
        Check(
            "bundle runs",
            OK,
            f"{backend} on {info['runtime']} {info['runtime_version']}, "
            f"{info['threads']} thread(s): {ms:.1f} ms per image",
        )
    )
    return [*checks, check_golden(bundle, opened)]


@click.command()
@click.argument("bundle", required=False, type=click.Path(path_type=str))
@click.option(
    "--backend",
    type=click.Choice(list(BACKENDS)),
    default="cpu",
    show_default=True,
    help="The setup to check: with edgetpu, a missing Edge TPU or libedgetpu is a failure.",
)
@click.option("--device", default=None, metavar="DEV", help="Edge TPU device to try (usb:0, pci:0, ...).")
@click.option(
    "--runtime",
    type=click.Choice(RUNTIME_CHOICES),
    default="auto",
    show_default=True,
    help="TFLite runtime to check for.",
)
@json_flag("Print the checks as JSON.")
def doctor(bundle, backend, device, runtime, as_json):
    """Check that this machine can classify: Python and NumPy, TFLite runtimes, XNNPACK, Edge TPU
    devices and libedgetpu, onnxruntime and its providers (TensorRT, CUDA), cameras, CPU governor,
    free disk, and (given BUNDLE) that the model loads and runs and that this machine computes what the
    bundle was made with (its golden check: the same preprocessed bytes, outputs within a few steps).
    Exits 1 when the chosen setup cannot run.

    \b
    Examples:
      edge doctor
      edge doctor models/mobilenetv2-int8
      edge doctor models/mobilenetv2-int8 --backend edgetpu --device usb:0
      edge doctor models/mobilenetv2-int8 --backend onnx
    """
    checks = check_python() + check_runtimes(runtime)
    runtime_ok = not any(c.status == FAIL for c in checks)
    model = None
    if bundle and runtime_ok:
        bundle_checks = check_bundle(bundle, backend, runtime, device)
        if bundle_checks[0].status == OK:
            model = Path(bundle) / "model.tflite"
    checks.append(check_xnnpack(model, runtime) if runtime_ok else Check("xnnpack", INFO, "no runtime"))
    checks += check_edgetpu(backend == "edgetpu", device)
    checks += check_onnx(backend == "onnx")
    checks += check_cameras() + [check_preprocessing()] + check_system()
    if bundle:
        checks += bundle_checks if runtime_ok else [Check("bundle", FAIL, "not tried: no TFLite runtime")]
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        width = max(len(c.area) for c in checks)
        for c in checks:
            click.echo(f"{c.status:>4}  {c.area:<{width}}  {c.detail}")
        click.echo(
            f"\n{len(failed)} problem(s): this setup cannot run."
            if failed
            else "\nready: this setup can classify."
        )
    return 1 if failed else 0
