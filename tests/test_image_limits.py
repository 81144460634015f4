"""No input file of 10 MB or less takes a command past 500 MB (issue 24, item 6).

imagesize reads no size from Radiance HDR, PFM or Sun raster headers, and OpenCV decodes by content
whatever the suffix: a 5 MB HDR file named a.jpg took the daemon to 2.1 GB, a 9 MB one `edge classify`
to 3.5 GB; a 0.5 MB 16-bit RGBA PNG of 8000 x 8000 took it to 2.5 GB. Now only JPEG, PNG, BMP, TIFF
and WebP are decoded, known by their content, each within a budget read from its header. Each file
goes through the real commands in a subprocess, whose peak RSS the kernel reports (wait4)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import hostile_images as hi

LIMIT_MB = 500

# name -> (bytes, what the one error line says); every name says .jpg, none is a JPEG
REFUSED_BY_CONTENT = {
    "hdr_5mb.jpg": (lambda: hi.radiance_hdr(32000, 2600), "its content is Radiance HDR, not JPEG"),
    "hdr_9mb.jpg": (lambda: hi.radiance_hdr(32000, 4500), "its content is Radiance HDR, not JPEG"),
    "pfm.jpg": (lambda: hi.pfm(20000, 20000), "its content is PFM, not JPEG"),
    "sun_raster.jpg": (lambda: hi.sun_raster(16000, 16000), "its content is Sun raster, not JPEG"),
    "pbm.jpg": (lambda: hi.pbm(9000, 9000), "its content is PNM (PBM, PGM, PPM or PAM), not JPEG"),
}
# supported formats whose header says they would cost too much to decode
REFUSED_BY_HEADER = {
    "png16_rgba_8000.png": (lambda: hi.png(8000), "declares 8000 x 8000 pixels"),
    "png16_rgba_5000.png": (lambda: hi.png(5000), "MB to decode, over the limit of 192 MB"),
    "float_tiff.tiff": (
        lambda: cv2.imencode(
            ".tiff", np.zeros((3000, 3000, 4), np.float32), [cv2.IMWRITE_TIFF_COMPRESSION, 8]
        )[1],
        "MB to decode, over the limit of 192 MB",
    ),
}
# supported formats at the edge of the budget: decoded and classified
AT_THE_LIMIT = {
    "jpeg_rgb_32mp.jpg": lambda: cv2.imencode(
        ".jpg", hi.blocks(5650, 5650, 3), [cv2.IMWRITE_JPEG_QUALITY, 20]
    )[1],
    "png16_rgba_12mp.png": lambda: hi.png(3460),
    "float_tiff_6mp.tiff": lambda: cv2.imencode(
        ".tiff", hi.blocks(2440, 2440, 4).astype(np.float32) / 255, [cv2.IMWRITE_TIFF_COMPRESSION, 8]
    )[1],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("heavy")
    for name, (make, _) in {**REFUSED_BY_CONTENT, **REFUSED_BY_HEADER}.items():
        (folder / name).write_bytes(bytes(make()))
    for name, make in AT_THE_LIMIT.items():
        (folder / name).write_bytes(bytes(make()))
    assert all(p.stat().st_size <= 10 * 2**20 for p in folder.iterdir())
    return folder


# Why a launcher: a child started from pytest (vfork, then exec) inherits pytest's own peak as its
# ru_maxrss (the kernel keeps the larger of the old and new image's), and pytest passes 500 MB once
# TensorFlow has been loaded by earlier tests. edge started from this small process is measured alone;
# the launcher passes SIGTERM on and writes edge's peak (KB) to the file it is given.
LAUNCHER = """
import os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_mb(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for `proc` (from edge()); edge's exit code and its peak resident memory (MB) as the kernel
    counted it."""
    code = proc.wait()
    return code, int(proc.peak_file.read_text()) / 1024


def edge(*args, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "EDGE_RUN_TOKEN")}
    peak_file = cwd / f"peak-{time.monotonic_ns()}.kb"
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(peak_file), sys.executable, "-m", "edge.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )
    proc.peak_file = peak_file
    return proc


@pytest.mark.parametrize("name", [*REFUSED_BY_CONTENT, *REFUSED_BY_HEADER, *AT_THE_LIMIT])
def test_edge_classify_stays_under_500_mb_for_any_file(tiny_bundle, files, tmp_path, name):
    proc = edge("classify", tiny_bundle, files / name, cwd=tmp_path)
    code, peak = peak_mb(proc)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert peak < LIMIT_MB, f"{name}: {peak:.0f} MB"
    if name in AT_THE_LIMIT:
        assert code == 0 and "1 classified" in out + err, err
    else:
        errors = [line for line in err.splitlines() if line.startswith("error")]
        expected = {**REFUSED_BY_CONTENT, **REFUSED_BY_HEADER}[name][1]
        assert code == 1 and len(errors) == 1 and expected in errors[0], err


def test_the_hot_folder_stays_under_500_mb_and_records_each_refusal(tiny_bundle, files, tmp_path):
    hot = tmp_path / "hot"
    hot.mkdir()
    db = tmp_path / "r.db"
    proc = edge(
        "run", "--bundle", tiny_bundle, "--source", f"folder:{hot}", "--db", db, "--http", "off",
        "--archive", tmp_path / "flagged", cwd=tmp_path,
    )  # fmt: skip
    names = [*REFUSED_BY_CONTENT, *REFUSED_BY_HEADER, "jpeg_rgb_32mp.jpg"]
    try:
        for name in names:  # one at a time, as a microscope's software drops them
            (hot / name).write_bytes((files / name).read_bytes())
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with sqlite3.connect(db) as con:
                        if con.execute(
                            "SELECT 1 FROM frames WHERE source_ref LIKE ?", (f"%{name}",)
                        ).fetchone():
                            break
                except sqlite3.OperationalError:
                    pass
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
    code, peak = peak_mb(proc)
    assert code == 0, proc.stderr.read()[-2000:]
    assert peak < LIMIT_MB, f"{peak:.0f} MB"
    with sqlite3.connect(db) as con:
        frames = {Path(ref).name: (status, detail) for ref, status, detail in con.execute(
            "SELECT source_ref, status, detail FROM frames"
        )}  # fmt: skip
    for name, (_, expected) in {**REFUSED_BY_CONTENT, **REFUSED_BY_HEADER}.items():
        assert frames[name][0] == "corrupt" and expected in frames[name][1], (name, frames.get(name))
    assert frames["jpeg_rgb_32mp.jpg"][0] == "classified"
