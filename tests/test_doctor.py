"""`edge doctor`: a real run on this machine, and its judgements on setups this machine does not have."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge.commands.doctor as doctor
from edge.runtime.edgetpu import probe

ROOT = Path(__file__).resolve().parents[1]


def edge(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def _checks(proc) -> dict:
    data = json.loads(proc.stdout)
    return {c["area"]: c for c in data["checks"]} | {"ok": data["ok"]}


def test_doctor_without_a_bundle_reports_the_machine():
    proc = edge("doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = _checks(proc)
    assert checks["ok"] is True
    assert np.__version__ in checks["numpy"]["detail"]
    assert checks["runtime litert"]["status"] == "ok" and checks["runtime"]["detail"] == "using litert"
    for area in (
        "python",
        "edgetpu device",
        "libedgetpu",
        "camera",
        "picamera2",
        "cpu governor",
        "disk",
        "xnnpack",
    ):
        assert area in checks, area


def test_doctor_loads_and_runs_a_bundle_and_sees_xnnpack(tiny_bundle):
    proc = edge("doctor", tiny_bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {
        line.split()[1]: line for line in proc.stdout.splitlines() if line.strip() and len(line.split()) > 1
    }
    assert lines["xnnpack"].split()[0] == "ok"
    assert "bundle runs" in proc.stdout and "ms per image" in proc.stdout
    assert proc.stdout.rstrip().endswith("ready: this setup can classify.")


def test_doctor_fails_on_a_broken_bundle(tiny_bundle, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(tiny_bundle).iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.tflite").write_bytes(b"garbage")
    proc = edge("doctor", broken, "--json")
    assert proc.returncode == 1
    checks = _checks(proc)
    assert checks["bundle"]["status"] == "FAIL" and "sha256 mismatch" in checks["bundle"]["detail"]


def test_doctor_fails_when_the_edgetpu_setup_is_missing():
    if probe().devices or probe().library:
        pytest.skip(
            "this machine has an Edge TPU or libedgetpu: the failure this test expects does not apply"
        )
    proc = edge("doctor", "--backend", "edgetpu", "--json")
    assert proc.returncode == 1
    checks = _checks(proc)
    assert checks["edgetpu device"]["status"] == "FAIL" and checks["libedgetpu"]["status"] == "FAIL"
    assert "libedgetpu1-std" in checks["libedgetpu"]["detail"]


def test_tflite_runtime_beside_numpy_2_is_flagged(monkeypatch):
    real_import = doctor.import_runtime

    def fake_import(name="auto"):
        if name == "tflite-runtime":  # what tflite-runtime 2.14 does on NumPy 2
            raise ImportError(
                "no TFLite runtime could be imported (tflite-runtime: AttributeError: _ARRAY_API not found)"
            )
        return real_import(name)

    monkeypatch.setattr(doctor, "import_runtime", fake_import)
    monkeypatch.setattr(
        doctor, "_version", lambda dist: {"ai-edge-litert": "2.3.0", "tflite-runtime": "2.14.0"}.get(dist)
    )
    monkeypatch.setattr(doctor.np, "__version__", "2.1.0")
    checks = {c.area: c for c in doctor.check_runtimes("auto")}
    assert checks["runtime tflite-runtime"].status == "warn"
    assert (
        "NumPy 2.1.0" in checks["runtime tflite-runtime"].detail
        and "NumPy 1" in checks["runtime tflite-runtime"].detail
    )
    assert checks["runtime"].detail == "using litert"
    forced = {c.area: c for c in doctor.check_runtimes("tflite-runtime")}
    assert forced["runtime"].status == "FAIL"


def test_no_runtime_at_all_is_a_failure(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda dist: None)
    checks = doctor.check_runtimes("auto")
    assert checks[-1].status == "FAIL" and "pip install '.[device]'" in checks[-1].detail


def test_edgetpu_checks_read_a_usb2_accelerator(tmp_path):
    usb = tmp_path / "sys/bus/usb/devices/1-1.2"
    usb.mkdir(parents=True)
    (usb / "idVendor").write_text("1a6e\n")
    (usb / "idProduct").write_text("089a\n")
    (usb / "speed").write_text("480\n")
    checks = doctor.check_edgetpu(wanted=True, device=None, root=str(tmp_path))
    assert (
        checks[0].status == "warn"
        and "480 Mbit/s (USB2" in checks[0].detail
        and "no firmware yet" in checks[0].detail
    )
