"""The hostile-input corpus of issue 15, run against edge classify, edge eval and edge run --source folder:.

    python scripts/hostile_corpus.py [--bundle models/mobilenetv2-int8] [--keep DIR]

Builds synthetic files only (no real data): a 0-byte file, a truncated JPEG, a PNG that declares
100000 x 100000 pixels, a real 30000 x 30000 PNG (streamed to disk: no 900 MB array), 16-bit,
grayscale, CMYK, RGBA, TIFF, WebP, a GIF named .jpg, a file name that is not UTF-8 and two symlink
loops, then the good images. The hostile entries sort before the good ones and are older, so a
command that stops at the first hostile file (a crash loop, for the hot folder) never reaches a
good image.

Every entry has an expected outcome: classified (an odd but valid image), refused (one clean error
line, or a corrupt record) or not a file (a symlink loop: never listed). Each command runs in a
subprocess and is judged on exactly that:
- edge classify: exit 1, no crash, every expected image classified and every refused file one error;
- edge eval: no crash, exactly the expected images scored, every refused file one error;
- edge run --source folder:: exit 0, one record per file with the expected status, then a restart
  (a new good image dropped in) that exits 0 and takes that image alone.
A crash is an exit code other than 0/1 (a signal) or a traceback. The script prints one line per
command (crash, clean errors, every good image classified, ok) and what went wrong below it, and
exits 1 if any command is not ok.
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
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGE = [sys.executable, "-m", "edge.cli"]
CLASSIFIED, REFUSED, NOT_A_FILE = "classified", "refused", "not a file"


def _cell(seed: int, side: int = 360) -> np.ndarray:
    """A stained-looking blob on a pale background (BGR uint8)."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side, 3), (200, 190, 225), np.uint8)
    cv2.circle(img, (side // 2, side // 2), side // 4, (150, 60, 120), -1)
    return cv2.GaussianBlur(img + rng.integers(0, 12, img.shape, dtype=np.uint8), (5, 5), 0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG header that declares width x height (the IDAT is tiny)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def _write_black_png(path: Path, side: int) -> None:
    """A real, complete side x side 8-bit grayscale PNG (black), compressed row by row: it decodes
    to side * side bytes, but writing it never holds more than one row."""
    row = b"\0" * (side + 1)  # filter byte + pixels
    packer = zlib.compressobj(1)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)))
        for _ in range(side):
            data = packer.compress(row)
            if data:
                fh.write(_chunk(b"IDAT", data))
        fh.write(_chunk(b"IDAT", packer.flush()) + _chunk(b"IEND", b""))


def build(folder: Path) -> dict[str, str]:
    """Write the corpus into `folder`; returns {printed name: expected outcome}, hostile entries first.
    Names as edge prints and stores them (edge.dataset.printable)."""
    from PIL import Image

    from edge.dataset import printable

    folder.mkdir(parents=True, exist_ok=True)
    base = os.fsencode(folder) + b"/"
    cell = _cell(9)
    rgb = cv2.cvtColor(cell, cv2.COLOR_BGR2RGB)
    gif = io.BytesIO()
    Image.fromarray(rgb).save(gif, "GIF")
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    # Hostile entries: prefix a_, written first and made older (the hot folder goes oldest first)
    hostile: dict[bytes, tuple[bytes | None, str]] = {
        b"a_zero_bytes.jpg": (b"", REFUSED),
        b"a_truncated.jpg": (cv2.imencode(".jpg", cell)[1].tobytes()[:2000], REFUSED),
        b"a_declares_100000x100000.png": (_png_declaring(100000, 100000), REFUSED),
        b"a_real_30000x30000.png": (None, REFUSED),  # over the 64 MP default limit: refused from its header
        b"a_sixteen_bit.png": (cv2.imencode(".png", cell.astype(np.uint16) * 257)[1].tobytes(), CLASSIFIED),
        b"a_grayscale.png": (
            cv2.imencode(".png", cv2.cvtColor(cell, cv2.COLOR_BGR2GRAY))[1].tobytes(),
            CLASSIFIED,
        ),
        b"a_rgba.png": (
            cv2.imencode(".png", cv2.cvtColor(cell, cv2.COLOR_BGR2BGRA))[1].tobytes(),
            CLASSIFIED,
        ),
        b"a_image.tiff": (cv2.imencode(".tiff", cell)[1].tobytes(), CLASSIFIED),
        b"a_image.webp": (cv2.imencode(".webp", cell)[1].tobytes(), CLASSIFIED),
        b"a_cmyk.jpg": (cmyk.getvalue(), CLASSIFIED),
        # OpenCV decodes GIF since 4.11, but only the formats edge reads are decoded (edge/image_header.py)
        b"a_gif_named.jpg": (gif.getvalue(), REFUSED),
        b"a_Zelle_\xe4.jpg": (cv2.imencode(".jpg", _cell(11))[1].tobytes(), CLASSIFIED),  # not valid UTF-8
    }
    for name, (data, _) in hostile.items():
        if data is None:
            _write_black_png(Path(os.fsdecode(base + name)), 30000)
        else:
            with open(base + name, "wb") as fh:
                fh.write(data)
    os.symlink(b"a_loop.jpg", base + b"a_loop.jpg")  # a link to itself
    os.symlink(b".", base + b"a_dir_loop", target_is_directory=True)
    good = {b"z_good_0.jpg": ".jpg", b"z_good_1.png": ".png", b"z_good_2.jpeg": ".jpeg"}
    for i, (name, ext) in enumerate(good.items()):
        with open(base + name, "wb") as fh:
            fh.write(cv2.imencode(ext, _cell(i))[1].tobytes())
    now = time.time()
    for i, name in enumerate([*hostile, b"a_loop.jpg", b"a_dir_loop", *good]):
        os.utime(base + name, (now - 600 + i, now - 600 + i), follow_symlinks=False)
    expected = {printable(n): outcome for n, (_, outcome) in hostile.items()}
    expected |= {"a_loop.jpg": NOT_A_FILE, "a_dir_loop": NOT_A_FILE}
    return expected | {printable(n): CLASSIFIED for n in good}


def _crashed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode not in (0, 1) or "Traceback (most recent call last)" in proc.stderr


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


def _run(args: list, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EDGE, *map(str, args)], capture_output=True, text=True, errors="replace", cwd=ROOT, timeout=timeout
    )


def _names(expected: dict[str, str], outcome: str) -> set[str]:
    return {name for name, o in expected.items() if o == outcome}


def _mismatch(what: str, got: set[str], want: set[str]) -> list[str]:
    problems = []
    if want - got:
        problems.append(f"{what}: missing {sorted(want - got)}")
    if got - want:
        problems.append(f"{what}: unexpected {sorted(got - want)}")
    return problems


def _error_names(stderr: str) -> list[str]:
    """The file name of each `error: PATH: reason` line (names hold no ': ')."""
    return [Path(line[len("error: ") :].split(": ", 1)[0]).name for line in _errors(stderr)]


def check_classify(bundle: Path, folder: Path, expected: dict[str, str], good: set[str]) -> dict:
    proc = _run(["classify", bundle, folder, "--json"])
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    classified = [Path(r["path"]).name for r in rows if "label" in r and "error" not in r]
    errors = _error_names(proc.stderr)
    problems = (
        [f"exit {proc.returncode}, expected 1 (some files are refused)"] if proc.returncode != 1 else []
    )
    problems += _mismatch("classified", set(classified), _names(expected, CLASSIFIED))
    problems += _mismatch("error lines", set(errors), _names(expected, REFUSED))
    if len(errors) != len(set(errors)) or len(classified) != len(set(classified)):
        problems.append("a file was reported twice")
    return {
        "exit": proc.returncode,
        "crash": _crashed(proc),
        "clean_errors": len(errors),
        "classified": len(classified),
        "every_good_classified": good <= set(classified),
        "problems": problems,
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def check_eval(bundle: Path, folder: Path, expected: dict[str, str], good: set[str], tmp: Path) -> dict:
    from edge.bundle import Bundle

    root = tmp / "eval"
    label = Bundle.load(bundle).labels[0]
    shutil.copytree(folder, root / label, symlinks=True)
    out = tmp / "eval.json"
    proc = _run(["eval", bundle, root, "--json", out, "--baseline-images", "0"])
    report = json.loads(out.read_text()) if out.exists() else {}
    want = _names(expected, CLASSIFIED)
    failed = {Path(e["path"]).name for e in report.get("errors", [])}
    problems = [] if report else ["no report written"]
    if report.get("n") != len(want):
        problems.append(f"scored {report.get('n')}, expected exactly {len(want)}")
    problems += _mismatch("failed files", failed, _names(expected, REFUSED))
    problems += _mismatch("error lines", set(_error_names(proc.stderr)), _names(expected, REFUSED))
    return {
        "exit": proc.returncode,
        "crash": _crashed(proc),
        "clean_errors": len(_errors(proc.stderr)),
        "scored": report.get("n"),
        "failed": report.get("n_failed"),
        # eval reports counts, not names: every good image scored means every expected image scored
        "every_good_classified": report.get("n") == len(want) and not (failed & good),
        "problems": problems,
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def check_run(bundle: Path, folder: Path, expected: dict[str, str], good: set[str], tmp: Path) -> dict:
    db = tmp / "run.db"
    config = tmp / "run.toml"
    config.write_text("[source.folder]\npoll_s = 0.1\nsettle_s = 0.5\n")
    args = ["run", "--config", config, "--bundle", bundle, "--source", f"folder:{folder}", "--db", db]
    args += ["--http", "off"]
    want = _names(expected, CLASSIFIED)
    # Ends once every expected image is classified (the hostile files are older: taken before them),
    # or after 60 s, when something is wrong.
    proc = _run([*args, "--max-frames", len(want), "--duration", "60"], timeout=300)

    def frames() -> list[tuple[str, str]]:
        if not db.exists():
            return []
        with sqlite3.connect(db) as con:
            return con.execute("SELECT source_ref, status FROM frames ORDER BY rowid").fetchall()

    first = frames()
    classified = [ref for ref, status in first if status == "classified"]
    corrupt = [ref for ref, status in first if status == "corrupt"]
    problems = [f"exit {proc.returncode}, expected 0"] if proc.returncode != 0 else []
    problems += _mismatch("classified", set(classified), want)
    problems += _mismatch("recorded corrupt", set(corrupt), _names(expected, REFUSED))
    if len(first) != len({ref for ref, _ in first}):
        problems.append("a file was recorded twice")
    # A restart must not trip over any file again, and must take a new image.
    cv2.imwrite(str(folder / "z_good_new.jpg"), _cell(5))
    summary = tmp / "restart.json"
    again = _run([*args, "--max-frames", "1", "--duration", "30", "--summary-json", summary], timeout=300)
    taken = frames()[len(first) :]
    if again.returncode != 0:
        problems.append(f"restart: exit {again.returncode}, expected 0")
    if taken != [("z_good_new.jpg", "classified")]:
        problems.append(f"restart took {taken}, expected only z_good_new.jpg, classified")
    return {
        "exit": proc.returncode,
        "restart_exit": again.returncode,
        "crash": _crashed(proc) or _crashed(again),
        "clean_errors": len(corrupt),
        "frames_recorded": len(first),
        "classified": len(classified),
        "restart_took": len(taken),
        "every_good_classified": good <= set(classified) and ("z_good_new.jpg", "classified") in taken,
        "problems": problems,
        "stderr_tail": (proc.stderr.strip().splitlines() + again.stderr.strip().splitlines())[-3:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "mobilenetv2-int8")
    parser.add_argument("--keep", type=Path, help="Build the corpus here and keep it.")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-")) if opts.keep is None else opts.keep
    folder = tmp / "corpus"
    expected = build(folder)
    good = {name for name in expected if name.startswith("z_good_")}
    counts = {o: len(_names(expected, o)) for o in (CLASSIFIED, REFUSED, NOT_A_FILE)}
    print(
        f"corpus: {len(good)} good images, {len(expected) - len(good)} hostile entries in {folder} "
        f"(expected: {counts[CLASSIFIED]} classified, {counts[REFUSED]} refused, {counts[NOT_A_FILE]} not files)"
    )
    results = {
        "classify": check_classify(opts.bundle, folder, expected, good),
        "eval": check_eval(opts.bundle, folder, expected, good, tmp),
        "run --source folder:": check_run(opts.bundle, folder, expected, good, tmp),
    }
    for command, r in results.items():
        r["ok"] = not r["crash"] and r["every_good_classified"] and not r["problems"]
        shown = {k: v for k, v in r.items() if k not in ("problems", "stderr_tail")}
        print(f"\nedge {command}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        for line in r["problems"]:
            print(f"    NOT OK: {line}")
        for line in r["stderr_tail"]:
            print(f"    {line}")
    if opts.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
