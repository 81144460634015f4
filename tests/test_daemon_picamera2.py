"""The picamera2 source against a faithful test double (no libcamera here)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.daemon.capture import CaptureThread, DropOldestQueue
from edge.daemon.config import load_config
from edge.daemon.sources import Frame, SourceError, open_source
from edge.daemon.sources.picamera2 import lores_to_bgr
from edge.daemon.telemetry import Telemetry
from tests import fake_picamera2


@pytest.fixture
def camera(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2)
    monkeypatch.setattr(fake_picamera2.Picamera2, "fail_on_capture", None)
    monkeypatch.setattr(fake_picamera2.Picamera2, "fail_to_open", False)
    fake_picamera2.instances.clear()
    return fake_picamera2


def _source(**picamera2):
    options = {"settle_s": 0.05, "main_size": [1280, 960], "lores_size": [320, 240], **picamera2}
    return open_source(load_config(overrides={"source": {"uri": "picamera2:0", "picamera2": options}}).source)


def test_configures_two_streams_and_locks_settled_exposure_and_white_balance(camera):
    source = _source()
    source.open()
    cam = camera.instances[-1]
    assert cam.camera_config["main"] == {"format": "RGB888", "size": (1280, 960)}
    assert cam.camera_config["lores"] == {"format": "YUV420", "size": (320, 240)}
    lock = cam.control_log[-1]
    assert lock["AeEnable"] is False and lock["AwbEnable"] is False
    # Locked at what auto had settled on (it moves from its start values while settling).
    assert lock["ExposureTime"] > 5000 and lock["AnalogueGain"] > 1.0 and lock["ColourGains"][0] > 1.0
    settled = cam.exposure
    frame = source.read()
    source.read()
    assert cam.exposure == settled, "exposure must not drift after the lock"
    assert frame.image.shape == (240, 320, 3) and frame.display.shape == (960, 1280, 3)
    source.close()
    assert cam.closed


def test_rgb888_is_bgr_in_memory_and_lores_yuv_comes_back_as_bgr(camera):
    source = _source()
    source.open()
    frame = source.read()
    # The synthetic background is pink-violet: red above blue in true colour. Swapped channels would flip it.
    for img in (frame.image, frame.display):
        assert img[..., 2].mean() > img[..., 0].mean()
    small = frame.display[::4, ::4].astype(float)
    assert np.abs(small.mean(axis=(0, 1)) - frame.image.astype(float).mean(axis=(0, 1))).max() < 6


def test_fixed_values_from_config_win_over_auto(camera):
    source = _source(
        exposure_time_us=12000, analogue_gain=1.5, colour_gains=[2.0, 1.2], lock_white_balance=True
    )
    source.open()
    lock = camera.instances[-1].control_log[-1]
    assert lock["ExposureTime"] == 12000 and lock["AnalogueGain"] == 1.5 and lock["ColourGains"] == (2.0, 1.2)


def test_no_lock_when_disabled(camera):
    source = _source(lock_exposure=False, lock_white_balance=False)
    source.open()
    assert not any("AeEnable" in c or "AwbEnable" in c for c in camera.instances[-1].control_log)


@pytest.mark.parametrize("fmt", ["RGB888", "BGR888", "XRGB8888", "XBGR8888", "YUV420"])
def test_every_lores_format_converts_to_the_same_bgr(camera, fmt):
    source = _source(lores_format=fmt)
    source.open()
    frame = source.read()
    assert frame.image.shape == (240, 320, 3)
    assert frame.image[..., 2].mean() > frame.image[..., 0].mean()


def test_malformed_lores_is_rejected():
    with pytest.raises(ValueError):
        lores_to_bgr(np.zeros((100, 100), np.uint8), "YUV420", (100, 100))


def test_capture_failure_reconnects_with_backoff_and_counts(camera):
    camera.Picamera2.fail_on_capture = 4  # every camera handle dies on its 4th request (1 settle + 2 frames)
    source = _source(settle_s=0.0)
    telemetry, stop = Telemetry(), threading.Event()
    queue = DropOldestQueue(64)
    capture = CaptureThread(source, queue, telemetry, stop, reconnect_max_s=0.05)
    capture.start()
    frames = 0
    while frames < 6:
        item = queue.get(timeout=5)
        assert item is not None, "capture thread stalled"
        frames += isinstance(item, Frame)
    stop.set()
    capture.join(5)
    assert telemetry.source_errors >= 2 and telemetry.reconnects >= 2
    assert all(cam.closed for cam in camera.instances[:-1]), (
        "a failed camera handle must be closed before reopening"
    )


def test_busy_camera_is_a_source_error(camera):
    camera.Picamera2.fail_to_open = True
    with pytest.raises(SourceError, match="busy"):
        _source().open()


def test_daemon_end_to_end_on_the_picamera2_double(tiny_bundle, tmp_path):
    # `import picamera2` in the daemon subprocess finds a shim that re-exports the double.
    shim = tmp_path / "shim" / "picamera2"
    shim.mkdir(parents=True)
    # The checkout goes on sys.path AFTER site-packages (as pytest's --import-mode=append does), so that
    # under `make test-device` the daemon is still the installed edge; only `tests` comes from here.
    root = Path(__file__).resolve().parents[1]
    (shim / "__init__.py").write_text(
        f"import sys\nsys.path.append({str(root)!r})\nfrom tests.fake_picamera2 import Picamera2  # noqa: F401\n"
    )
    labels = json.loads((tiny_bundle / "manifest.json").read_text())["labels"]
    config = tmp_path / "pi.toml"
    config.write_text(
        '[source]\nuri = "picamera2"\n'
        '[pipeline]\nmode = "cell"\n'  # a camera counts in field mode unless told: the centred region here
        "[source.picamera2]\nsettle_s = 0.1\nmain_size = [1280, 960]\nlores_size = [320, 240]\n"
        f"[archive]\nalert_classes = {json.dumps(labels)}\n"  # archive every cell, to check the crops
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            str(config),
            "--bundle",
            str(tiny_bundle),
            "--db",
            str(tmp_path / "pi.db"),
            "--max-frames",
            "10",
            "--http",
            "off",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "pi.db") as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 10
        box = json.loads(con.execute("SELECT box FROM results LIMIT 1").fetchone()[0])
    assert box == [100, 60, 120, 120]  # region 0.5 of the 320 x 240 lores stream
    jpegs = sorted((tmp_path / "flagged").rglob("*.jpg"))
    assert len(jpegs) == 10
    # Archived from the full-resolution main stream: the same region, 4x larger.
    assert cv2.imread(str(jpegs[0])).shape == (480, 480, 3)
