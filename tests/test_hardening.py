"""Issue 15's smaller fixes, each through the real command: edge eval's pixel limit, the default bundle
from any directory, the page token kept out of the database, and no runtime noise on the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.synthetic import render_cell

ROOT = Path(__file__).resolve().parents[1]


def edge(*args, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_eval_max_pixels_refuses_a_larger_image_and_scores_the_rest(tiny_bundle, tmp_path):
    rng = np.random.default_rng(9)
    folder = tmp_path / "val" / "round"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a_large.png"), render_cell("round", rng, 100))  # 10,000 pixels
    for i in range(3):
        cv2.imwrite(str(folder / f"b_small{i}.png"), render_cell("round", rng, 60))  # 3,600 pixels
    out = tmp_path / "eval.json"
    proc = edge(
        "eval", tiny_bundle, tmp_path / "val", "--json", out, "--baseline-images", 0, "--max-pixels", 5000
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {folder / 'a_large.png'}: declares 100 x 100 pixels, over the limit of 5,000 (max_pixels)"
    ], proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["n_failed"] == 1 and "Traceback" not in proc.stderr
