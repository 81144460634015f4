"""Field mode on the real thing: the committed tiny int8 detector (scripts/make_test_detector.py) through
the real TFLite runtime, `edge detect`, `edge eval-detector`, real `edge run --mode field` subprocesses
with SQLite, and `edge bench --mode field`. Synthetic fields only (edge.synthetic); no TensorFlow."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge.bundle import Bundle
from edge.cli import cli, main
from edge.detect.detector import Detector
from edge.detect.evaluate import FrameTruth, match
from edge.errors import BundleError
from edge.predict import Classifier
from edge.synthetic import make_voc_dataset, render_field
from tests.daemon_cli import edge_run, replay_summary

ROOT = Path(__file__).resolve().parents[1]
TINY_DETECTOR = ROOT / "tests" / "fixtures" / "tiny-detector-int8"


@pytest.fixture(scope="module")
def detector_bundle(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("detector") / "tiny-detector"
    shutil.copytree(TINY_DETECTOR, copy)
    return copy


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """40 synthetic fields, every 5th without a white cell, as a VOC folder."""
    return make_voc_dataset(tmp_path_factory.mktemp("voc") / "fields", frames=40, seed=11)


def _found(dets, boxes) -> int:
    t = FrameTruth(
        np.array([[x, y, x + w, y + h] for _, (x, y, w, h) in boxes], float).reshape(-1, 4), np.zeros((0, 4))
    )
    return sum(1 for m in match(sorted(dets, key=lambda d: -d.score), t, 0.5) if m)


def test_the_tiny_detector_finds_drawn_cells_in_image_pixels(detector_bundle):
    det = Detector(Bundle.load(detector_bundle))
    assert det.kinds == ["wbc"] and det.spec.stride == 8
    rng = np.random.default_rng(21)
    hits = cells = 0
    for _ in range(12):
        image, boxes = render_field(rng, 640, 480, n_extra=2)
        dets, ms = det.detect(image)
        assert set(ms) == {"preprocess", "invoke", "decode"}
        assert all(0 <= d.box[0] and d.box[0] + d.box[2] <= 640 and d.box[1] + d.box[3] <= 480 for d in dets)
        hits += _found(dets, boxes)
        cells += len(boxes)
    assert hits >= 0.75 * cells  # a 15 KB model on fields it never saw
    empty, _ = render_field(rng, 640, 480)
    assert len(det.detect(empty)[0]) <= 1


def test_bundle_contract_holds_for_detectors(detector_bundle, tiny_bundle, tmp_path):
    b = Bundle.load(detector_bundle)
    assert b.is_detector and b.manifest.detector.crop.cell_fraction == 0.5
    with pytest.raises(BundleError, match="a detector bundle, not a classifier"):
        Classifier.open(b)
    with pytest.raises(BundleError, match="a classifier bundle, not a detector"):
        Detector(Bundle.load(tiny_bundle))
    bad = tmp_path / "bad"
    shutil.copytree(detector_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["detector"]["boxes"] = "no_such_output"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    # the decoding is sealed in the model like a classifier's labels: an edited manifest is refused
    with pytest.raises(BundleError, match="detector differ from what model.tflite was sealed with"):
        Bundle.load(bad)
    manifest.pop("detector")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="task detector and a detector section go together"):
        Bundle.load(bad)
    (bad / "model.tflite").write_bytes(b"x" + (detector_bundle / "model.tflite").read_bytes()[1:])
    manifest["detector"] = json.loads((detector_bundle / "manifest.json").read_text())["detector"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(bad)


def test_edge_detect_json_folders_errors_and_plot(detector_bundle, tiny_bundle, voc, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(voc / "JPEGImages", images / "deep" / "down")
    (images / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    (images / "empty.png").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "detect",
                "--detector",
                str(detector_bundle),
                str(tiny_bundle),
                str(images),
                "--json",
                "--plot",
                str(tmp_path / "plots"),
            ]
        )
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    errors = [r for r in records if "error" in r]
    assert len(errors) == 2 and len(records) == 42
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 2  # one line each
    ok = [r for r in records if "error" not in r]
    assert all(r["width"] == 640 and r["height"] == 480 for r in ok)
    with_cells = [r for r in ok if r["cells"]]
    assert len(with_cells) >= 25
    cell = with_cells[0]["cells"][0]
    assert set(cell) >= {"box", "score", "kind", "label", "confidence", "uncertain", "top_k", "crop"}
    assert cell["kind"] == "wbc" and len(cell["box"]) == 4 and 0 < cell["score"] <= 1
    x, y, w, h = cell["box"]
    cx, cy, side, _ = cell["crop"]
    # the crop rule, from the float box (the record rounds it to whole pixels)
    assert abs(side - max(w, h) / 0.5) <= 2 and abs(cx + side / 2 - (x + w / 2)) <= 1.5
    assert len(list((tmp_path / "plots").glob("*.jpg"))) == 40


def test_edge_detect_text_names_images_without_cells(detector_bundle, tiny_bundle, tmp_path):
    image, _ = render_field(np.random.default_rng(3), 640, 480)
    cv2.imwrite(str(tmp_path / "red_only.png"), image)
    result = CliRunner().invoke(
        cli, ["detect", "--detector", str(detector_bundle), str(tiny_bundle), str(tmp_path / "red_only.png")]
    )
    assert result.exit_code == 0 and "red_only.png\tno white cell" in result.output


def test_eval_detector_reports_ap_and_the_classical_baseline(detector_bundle, voc, tmp_path):
    result = CliRunner().invoke(
        cli, ["eval-detector", str(detector_bundle), str(voc), "--json", "--split", "all"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["frames"] == 40 and r["objects"] > 40
    assert 0.6 <= r["ap50"] <= 1.0 and r["ap50_95"] <= r["ap50"]
    assert set(r["ap_by_iou"]) == {f"{0.5 + 0.05 * i:.2f}" for i in range(10)}
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert {"preprocess", "invoke", "decode", "total"} <= set(r["ms_per_frame_p50"])
    text = CliRunner().invoke(
        cli, ["eval-detector", "classical", str(voc), "--plot", str(tmp_path / "pr.png")]
    )
    assert (
        text.exit_code == 0
        and "AP         @0.5" in text.output
        and "false positives per frame" in text.output
    )
    assert cv2.imread(str(tmp_path / "pr.png")).shape[0] > 400
    bad = CliRunner().invoke(cli, ["eval-detector", str(detector_bundle), str(tmp_path)])
    assert bad.exit_code != 0


def test_eval_detector_centred_on_single_cell_folders(detector_bundle, tmp_path):
    rng = np.random.default_rng(5)
    for name in ("lymphocyte", "platelet"):
        (tmp_path / name).mkdir()
    for i in range(6):
        image, _ = render_field(rng, 640, 480, center_class="round")  # one cell, centred
        cv2.imwrite(str(tmp_path / "lymphocyte" / f"{i}.png"), image)
        cv2.imwrite(str(tmp_path / "platelet" / f"{i}.png"), render_field(rng, 640, 480)[0])
    result = CliRunner().invoke(
        cli,
        ["eval-detector", str(detector_bundle), str(tmp_path), "--centred", "--json", "--threshold", "0.3"],
    )
    r = json.loads(result.stdout)
    assert r["white_cell_folders"] == ["lymphocyte"]  # platelet images hold no white cell
    assert r["folders"]["lymphocyte"]["images"] == 6
    assert r["white_cells"]["found"] == r["folders"]["lymphocyte"]["found"] >= 4
    # drawn cells span 0.24-0.30 of the side (render_field: radius 0.12-0.15 of the shorter side)
    assert 0.15 <= r["white_cells"]["cell_side_fraction"]["median"] <= 0.4


# --- the daemon --------------------------------------------------------------------------------------


def _rows(db: Path, sql: str):
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_run_field_mode_rows_boxes_and_no_rows_for_empty_frames(detector_bundle, tiny_bundle, voc, tmp_path):
    db = tmp_path / "r.db"
    r, summary = replay_summary(
        tiny_bundle, voc / "JPEGImages", tmp_path, "--mode", "field", "--detector", detector_bundle
    )
    assert summary["frames_classified"] == 40
    f = summary["field"]
    assert f["fields_seen"] >= 35  # unrelated synthetic fields: (almost) every frame is a jump
    # every new cell is a row; the differential counts the confident ones, the unsure wait for review
    assert f["cells_counted"] == summary["results"] == f["differential_cells"] + summary["uncertain"]
    assert "field:" in r.stdout and "fields seen" in r.stdout
    # frames holding no white cell (every 5th) produced no row
    empty = {i for i in range(40) if i % 5 == 4}
    refs = dict(_rows(db, "SELECT frame_id, source_ref FROM frames"))
    with_rows = {fid for (fid,) in _rows(db, "SELECT DISTINCT frame_id FROM results")}
    assert not {fid for fid, ref in refs.items() if int(Path(ref).stem.split("_")[1]) in empty} & with_rows
    boxes = _rows(db, "SELECT box, track_id, detector_score FROM results")
    assert boxes and all(len(json.loads(b)) == 4 and t is not None and 0 < s <= 1 for b, t, s in boxes)
    assert len({t for _, t, _ in boxes}) == len(boxes)  # one row per tracked cell


def test_the_threaded_layout_detects_ahead_and_counts_what_inline_counts(
    detector_bundle, tiny_bundle, voc, tmp_path
):
    """The threaded layout's capture thread runs the detector on the next frame (FieldMode.look_ahead)
    while the pipeline thread classifies the previous one: the same rows as the inline layout, and the
    rows say the detection was done ahead."""
    rows = {}
    for layout in ("inline", "threaded"):
        out = tmp_path / layout
        out.mkdir()
        replay_summary(
            tiny_bundle,
            voc / "JPEGImages",
            out,
            "--mode",
            "field",
            "--detector",
            detector_bundle,
            "--layout",
            layout,
        )
        rows[layout] = _rows(
            out / "r.db",
            "SELECT f.source_ref, r.crop_index, r.box, r.label, r.track_id, r.timings FROM results r "
            "JOIN frames f USING (session_id, frame_id) ORDER BY f.source_ref, r.crop_index",
        )
    assert rows["inline"] and [r[:5] for r in rows["inline"]] == [r[:5] for r in rows["threaded"]]
    ahead = {layout: {json.loads(r[5])["detected_ahead"] for r in rows[layout]} for layout in rows}
    assert ahead == {"inline": {0.0}, "threaded": {1.0}}


def test_a_failed_look_ahead_leaves_the_frame_to_the_pipeline_thread(detector_bundle, tiny_bundle, voc):
    """A frame the capture thread cannot detect is detected again by the pipeline thread (which records a
    failure there, if it fails again); the capture thread keeps going."""
    from edge.daemon.capture import Capturer, CaptureThread, DropOldestQueue
    from edge.daemon.config import SourceConfig
    from edge.daemon.sources import Frame
    from edge.daemon.telemetry import Telemetry

    calls = []

    def look_ahead(image):
        calls.append(image.shape)
        if len(calls) == 1:
            raise RuntimeError("the detector broke on this frame")
        return "detected"

    class Three:
        live, kind, heartbeat, config = False, "test", 0.0, SourceConfig()

        def __init__(self):
            self.left = 3

        def read(self):
            self.left -= 1
            return Frame(np.zeros((8, 8, 3), np.uint8)) if self.left >= 0 else None

        def wait_for_next(self):
            pass

        def close(self):
            pass

    stop = threading.Event()
    queue = DropOldestQueue(8)
    source = Three()
    capturer = Capturer(source, Telemetry(), stop, opened=True, quiet=True, keep_open=True)
    thread = CaptureThread(source, queue, capturer.telemetry, stop, capturer=capturer, look_ahead=look_ahead)
    thread.start()
    thread.finished.wait(5)
    items = [queue.get(timeout=0) for _ in range(len(queue))]
    assert thread.fatal is None and len(calls) == 3
    assert [i.ahead for i in items if isinstance(i, Frame)] == [None, "detected", "detected"]


def test_run_field_mode_counts_a_still_stage_once(detector_bundle, tiny_bundle, tmp_path):
    still = tmp_path / "still"
    still.mkdir()
    rng = np.random.default_rng(8)
    image, boxes = render_field(rng, 640, 480, center_class="round", n_extra=1)
    for i in range(60):  # 6 s of a still stage at 10 fps: the same field, fresh camera noise
        noisy = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(still / f"frame_{i:03d}.png"), noisy)
    db = tmp_path / "still.db"
    # every label an alert class: every counted cell is flagged, so the archive must hold each one
    config = tmp_path / "edge-run.toml"
    labels = Bundle.load(tiny_bundle).labels
    config.write_text(f"[archive]\nalert_classes = {json.dumps(labels)}\nmin_free_mb = 0\n")
    r = edge_run(
        "--config",
        config,
        "--mode",
        "field",
        "--detector",
        detector_bundle,
        "--bundle",
        tiny_bundle,
        "--source",
        f"replay:{still}",
        "--fps",
        "10",
        "--db",
        db,
        "--http",
        "off",
        "--archive",
        tmp_path / "flagged",
        "--summary-json",
        tmp_path / "s.json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames_classified"] == 60 and s["field"]["fields_seen"] == 1
    n_found = len(Detector(Bundle.load(detector_bundle)).detect(image)[0])
    assert n_found >= 1
    (rows,) = _rows(db, "SELECT COUNT(*) FROM results")
    assert rows[0] == s["field"]["cells_counted"] == n_found  # each cell once, not once a frame
    assert s["field"]["cells_per_frame"] == pytest.approx(n_found, abs=0.5)
    # a flagged cell is archived once per track, not once a frame: one readable crop per row, with the
    # sidecar that says why, and the row's label in its name
    flagged = sorted((tmp_path / "flagged").rglob("*.jpg"))
    assert len(flagged) == rows[0] >= 1
    sidecars = [json.loads(f.with_suffix(".json").read_text()) for f in flagged]
    row_labels = sorted(label for (label,) in _rows(db, "SELECT label FROM results"))
    assert sorted(m["label"] for m in sidecars) == row_labels
    for f, meta in zip(flagged, sidecars, strict=True):
        assert cv2.imread(str(f)) is not None and f.stem.endswith(meta["label"])
        assert meta["reason"] == "alert_class"


def test_run_field_mode_rejects_a_bad_detector_in_one_line(tiny_bundle, tmp_path):
    r = edge_run(
        "--mode",
        "field",
        "--detector",
        tmp_path / "nope",
        "--bundle",
        tiny_bundle,
        "--db",
        tmp_path / "x.db",
        "--http",
        "off",
        cwd=tmp_path,
    )
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1 and "bundle not found" in r.stderr


def test_bench_field_mode(detector_bundle, tiny_bundle, voc, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(tiny_bundle),
            "--mode",
            "field",
            "--detector",
            str(detector_bundle),
            "--source",
            f"replay:{voc / 'JPEGImages'}",
            "--runs",
            "12",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["region"]["mode"] == "field" and r["reference"] == []
    f = r["field"]
    assert set(f["stages"]) >= {"detect_invoke", "classify_invoke", "crop", "track", "end_to_end"}
    assert f["stages"]["end_to_end"]["count"] == 12
    assert f["cells_per_frame"]["frames"] == 12 and f["per_cell"]["classify_invoke"]["count"] <= 12
    # the standard stages hold both models: invoke = detector + classifier invoke
    assert r["stages"]["invoke"]["min_ms"] >= f["stages"]["detect_invoke"]["min_ms"]
    assert r["overhead_ratio"] == pytest.approx(
        r["stages"]["end_to_end"]["p50_ms"] / r["stages"]["invoke"]["p50_ms"], rel=1e-3
    )
    for words in ("field stage (ms)", "per cell: classify", "detector + classifier invoke", "goal <= 1.5"):
        assert words in result.output


def test_run_field_mode_page_status_and_metrics(detector_bundle, tiny_bundle, voc, tmp_path):
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    env = {
        k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "EDGE_RUN_TOKEN")
    }
    # the tiny model is unsure of most synthetic fields' cells: count them, so the progress moves
    (tmp_path / "edge-run.toml").write_text("[differential]\ncount_uncertain = true\n")
    args = ["--mode", "field", "--detector", detector_bundle, "--bundle", tiny_bundle, "--source",
            f"replay:{voc / 'JPEGImages'}", "--loop", "--fps", "5", "--duration", "20", "--db", tmp_path / "r.db",
            "--http", "127.0.0.1:0", "--config", tmp_path / "edge-run.toml"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", *map(str, args)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        url = next(line.split(" ", 1)[1].strip() for line in proc.stdout if line.startswith("page: "))

        def get(path):
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=5) as r:
                return r.read(), r.headers

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = json.loads(get("/api/status")[0])
            if status["field"]["cells_counted"] >= 3:
                break
            time.sleep(0.5)
        assert status["mode"] == {"name": "field"}
        f = status["field"]
        assert f["fields_seen"] >= 2 and f["target_cells"] == 100 and f["differential_cells"] >= 3
        assert 0 < f["differential_progress"] <= 1 and "cells_per_frame" in f
        names = {m.name for m in text_string_to_metric_families(get("/metrics")[0].decode())}
        assert {
            "edge_field_cells_per_frame",
            "edge_fields_seen",
            "edge_field_cells_counted",
            "edge_differential_progress",
        } <= names
        for _ in range(20):  # a frame with a white cell: its box on the page carries the track
            body, headers = get("/frame.jpg")
            crops = json.loads(headers.get("X-Edge-Crops") or "[]")
            if crops:
                break
            time.sleep(0.3)
        assert crops and all("track_id" in c and "score" in c for c in crops)
        assert b"field" in get("/")[0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
