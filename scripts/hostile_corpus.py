"""The hostile-input corpus of issue 15, run against edge classify, edge eval and edge run --source folder:.

    python scripts/hostile_corpus.py [--bundle models/mobilenetv2-int8] [--keep DIR]

Builds synthetic files only (no real data): good 8-bit images next to a 0-byte file, a truncated
JPEG, a PNG that declares 100000 x 100000 pixels, a real 30000 x 30000 PNG, 16-bit, grayscale,
CMYK, RGBA, TIFF, WebP, a GIF named .jpg, a file name that is not UTF-8 and a symlink loop. Each
command runs in a subprocess; the script reports, per command, crashes (a traceback, a signal or
an exit code other than 0/1), clean one-line errors, and whether every good image was classified.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGE = [sys.executable, "-m", "edge.cli"]


def _cell(seed: int, side: int = 360) -> np.ndarray:
    """A stained-looking blob on a pale background (BGR uint8)."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side, 3), (200, 190, 225), np.uint8)
    cv2.circle(img, (side // 2, side // 2), side // 4, (150, 60, 120), -1)
    return cv2.GaussianBlur(img + rng.integers(0, 12, img.shape, dtype=np.uint8), (5, 5), 0)


def _png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG header that declares width x height (the IDAT is tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def build(folder: Path) -> tuple[list[str], list[str]]:
    """Write the corpus into `folder`; returns (good names, hostile names)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i, ext in enumerate((".jpg", ".png", ".jpeg")):
        name = f"good_{i}{ext}"
        cv2.imwrite(str(folder / name), _cell(i))
        good.append(name)
    cell = _cell(9)
    rgb = cv2.cvtColor(cell, cv2.COLOR_BGR2RGB)
    hostile = {
        "zero_bytes.jpg": b"",
        "truncated.jpg": cv2.imencode(".jpg", cell)[1].tobytes()[:2000],
        "declares_100000x100000.png": _png_declaring(100000, 100000),
    }
    for name, data in hostile.items():
        (folder / name).write_bytes(data)
    cv2.imwrite(str(folder / "real_30000x30000.png"), np.zeros((30000, 30000), np.uint8))
    cv2.imwrite(str(folder / "sixteen_bit.png"), cell.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "grayscale.png"), cv2.cvtColor(cell, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "rgba.png"), cv2.cvtColor(cell, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "image.tiff"), cell)
    cv2.imwrite(str(folder / "image.webp"), cell)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "GIF")
    (folder / "gif_named.jpg").write_bytes(buf.getvalue())
    with open(os.fsencode(folder) + b"/b_Zelle_\xe4.jpg", "wb") as f:  # not valid UTF-8
        f.write(cv2.imencode(".jpg", _cell(11))[1].tobytes())
    (folder / "loop.jpg").symlink_to("loop.jpg")  # a link to itself
    (folder / "dir_loop").symlink_to(".", target_is_directory=True)
    names = sorted(os.fsdecode(n) for n in os.listdir(os.fsencode(folder)))
    return good, [n for n in names if n not in good]


def _crashed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode not in (0, 1) or "Traceback (most recent call last)" in proc.stderr


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


def _run(args: list, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EDGE, *map(str, args)], capture_output=True, text=True, errors="replace", cwd=ROOT, timeout=timeout
    )


def check_classify(bundle: Path, folder: Path, good: list[str]) -> dict:
    proc = _run(["classify", bundle, folder, "--json"])
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    classified = {Path(r["path"]).name for r in rows if "label" in r and "error" not in r}
    return {
        "exit": proc.returncode,
        "crash": _crashed(proc),
        "clean_errors": sum("error" in r for r in rows),
        "classified": len(classified),
        "every_good_classified": set(good) <= classified,
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def check_eval(bundle: Path, folder: Path, good: list[str], tmp: Path) -> dict:
    from edge.bundle import Bundle

    root = tmp / "eval"
    label = Bundle.load(bundle).labels[0]
    shutil.copytree(folder, root / label, symlinks=True)
    out = tmp / "eval.json"
    proc = _run(["eval", bundle, root, "--json", out, "--baseline-images", "0"])
    report = json.loads(out.read_text()) if out.exists() else {}
    return {
        "exit": proc.returncode,
        "crash": _crashed(proc),
        "clean_errors": len(_errors(proc.stderr)),
        "scored": report.get("n"),
        "failed": report.get("n_failed"),
        "every_good_classified": report.get("n", 0) >= len(good),
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def check_run(bundle: Path, folder: Path, good: list[str], tmp: Path) -> dict:
    db = tmp / "run.db"
    args = ["run", "--bundle", bundle, "--source", f"folder:{folder}", "--db", db, "--http", "off"]
    proc = _run([*args, "--duration", "40"], timeout=300)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT source_ref, status, detail FROM frames").fetchall()
    classified = {
        Path(os.fsdecode(r[0]) if isinstance(r[0], bytes) else r[0]).name
        for r in rows
        if r[1] == "classified"
    }
    again = _run([*args, "--duration", "10"], timeout=300)  # a restart must not trip over any file again
    return {
        "exit": proc.returncode,
        "restart_exit": again.returncode,
        "crash": _crashed(proc) or _crashed(again),
        "frames_recorded": len(rows),
        "corrupt_recorded": sum(r[1] == "corrupt" for r in rows),
        "classified": len(classified),
        "every_good_classified": all(any(g in c for c in classified) for g in good),
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "mobilenetv2-int8")
    parser.add_argument("--keep", type=Path, help="Build the corpus here and keep it.")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-")) if opts.keep is None else opts.keep
    folder = tmp / "corpus"
    good, hostile = build(folder)
    print(f"corpus: {len(good)} good images, {len(hostile)} hostile entries in {folder}")
    results = {
        "classify": check_classify(opts.bundle, folder, good),
        "eval": check_eval(opts.bundle, folder, good, tmp),
        "run --source folder:": check_run(opts.bundle, folder, good, tmp),
    }
    for command, r in results.items():
        print(f"\nedge {command}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "stderr_tail"))
        for line in r["stderr_tail"]:
            print(f"    {line}")
    if opts.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r["crash"] or not r["every_good_classified"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
