"""The detection core on its own: decoding, the crop rule, VOC reading and its quirks, the split,
the AP computation, the classical baseline and the letterbox geometry. NumPy + OpenCV, no model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.detect.classical import ClassicalDetector
from edge.detect.crop import crop_box, crop_cell
from edge.detect.decode import Detection, decode, iou_matrix, nms, peaks
from edge.detect.evaluate import (
    FrameTruth,
    average_precision,
    evaluate,
    match,
    operating_threshold,
    threshold_for_recall,
)
from edge.detect.spec import CropRule, DetectorSpec
from edge.detect.voc import assign_splits, near_duplicates, parse_annotation, read_voc, split_of, truth
from edge.errors import DataError
from edge.preprocess import PreprocessSpec, input_geometry, preprocess
from edge.synthetic import make_voc_dataset, render_field, write_voc_annotation

SPEC = DetectorSpec(stride=16, heatmap="h", boxes="b", threshold=0.5, nms_iou=0.5)


def _maps(cells, grid=16):
    """A score map and box distances holding `cells`: (row, col, score, (l, t, r, b))."""
    heat = np.zeros((grid, grid, 1), np.float32)
    ltrb = np.zeros((grid, grid, 4), np.float32)
    for i, j, score, d in cells:
        heat[i, j, 0] = score
        ltrb[i, j] = d
    return heat, ltrb


# --- decoding --------------------------------------------------------------------------------------


def test_decode_maps_a_peak_back_through_the_letterbox():
    spec = PreprocessSpec(size=256, aspect="pad", contrast="none")
    shape = (480, 640, 3)
    geometry = input_geometry(shape, spec)
    # 640 x 480 -> a 640 square padded 80 px top and bottom -> 256: 2.5 image px per input px
    assert geometry == (2.5, 2.5, 0.0, -80.0)
    # a cell centred on grid cell (8, 5): centre (88, 136) input px, 2 cells each way = 32 input px
    heat, ltrb = _maps([(8, 5, 0.9, (2, 2, 2, 2))])
    (det,) = decode(heat, ltrb, SPEC, ["wbc"], geometry, shape)
    assert det.kind == "wbc" and det.score == pytest.approx(0.9)
    x, y, w, h = det.box
    assert (x, y, w, h) == pytest.approx(((88 - 32) * 2.5, (136 - 32) * 2.5 - 80, 160, 160))


def test_decode_threshold_peaks_and_clipping():
    shape = (256, 256, 3)
    geometry = (1.0, 1.0, 0.0, 0.0)
    heat, ltrb = _maps([(3, 3, 0.8, (2, 2, 2, 2)), (3, 4, 0.6, (2, 2, 2, 2)), (12, 12, 0.3, (1, 1, 1, 1))])
    ltrb[0, 0] = (5, 5, 1, 1)
    heat[0, 0, 0] = 0.95  # a cell in the corner: its box is clipped to the image
    dets = decode(heat, ltrb, SPEC, ["wbc"], geometry, shape)
    # (3, 4) is not a local maximum next to (3, 3); (12, 12) is below the threshold
    assert [round(d.score, 2) for d in dets] == [0.95, 0.8]
    assert dets[0].box[:2] == (0.0, 0.0)
    low = decode(heat, ltrb, SPEC, ["wbc"], geometry, shape, threshold=0.2)
    assert len(low) == 3  # evaluation ranks every candidate above a low floor


def test_equal_neighbours_are_one_cell_after_nms():
    heat, ltrb = _maps([(5, 5, 0.7, (2, 2, 2, 2)), (5, 6, 0.7, (3, 2, 1, 2))])  # a uint8 plateau
    rows, cols, _, _ = peaks(heat, 0.5)
    assert len(rows) == 2
    dets = decode(heat, ltrb, SPEC, ["wbc"], (1.0, 1.0, 0.0, 0.0), (256, 256))
    assert len(dets) == 1


def test_nms_and_iou():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    assert iou_matrix(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5) == [1, 2]
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.9) == [1, 2, 0]


def test_decode_refuses_maps_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        decode(np.zeros((16, 16, 1)), np.zeros((8, 8, 4)), SPEC, ["wbc"], (1, 1, 0, 0), (256, 256))


def test_input_geometry_for_each_aspect():
    assert input_geometry((480, 640), PreprocessSpec(size=224)) == (480 / 224, 480 / 224, 80.0, 0.0)
    assert input_geometry((480, 640), PreprocessSpec(size=224, aspect="stretch")) == (
        640 / 224,
        480 / 224,
        0,
        0,
    )
    # and the letterbox really puts the frame where input_geometry says
    spec = PreprocessSpec(size=64, aspect="pad", contrast="none", antialias=False)
    frame = np.full((48, 64, 3), 255, np.uint8)
    out = preprocess(frame, spec)
    sx, sy, left, top = input_geometry(frame.shape, spec)
    assert (
        out[: int(-top / sy) - 1].max() == 0
        and out[int(-top / sy) + 1 : 64 - int(-top / sy) - 1].min() == 255
    )


# --- the crop rule ---------------------------------------------------------------------------------


def test_crop_is_centred_on_the_box_and_sized_by_the_fraction():
    rule = CropRule(cell_fraction=0.5)
    assert crop_box((100, 100, 40, 60), rule) == (60, 70, 120, 120)  # side = max(w, h) / 0.5
    image = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    crop, square = crop_cell(image, (100, 100, 40, 60), rule)
    assert crop.shape == (120, 120, 3) and np.array_equal(crop, image[70:190, 60:180])


def test_crop_leaving_the_frame_is_reflected_or_filled():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :10] = 200  # a bright strip along the left edge
    crop, square = crop_cell(image, (0, 40, 20, 20), CropRule(cell_fraction=0.5))
    assert square == (-10, 30, 40, 40) and crop.shape == (40, 40, 3)
    assert crop[:, 1:10].min() == 200 and crop[:, 0].max() == 0  # mirrored about the edge pixel (101)
    filled, _ = crop_cell(
        image, (0, 40, 20, 20), CropRule(cell_fraction=0.5, border="constant", border_value=7)
    )
    assert (filled[:, :10] == 7).all()
    with pytest.raises(ValueError, match="cell_fraction"):
        CropRule(cell_fraction=2.0)


# --- VOC and the split -----------------------------------------------------------------------------


def _voc_file(tmp_path, objects, size=(640, 480)):
    (tmp_path / "JPEGImages").mkdir(exist_ok=True)
    (tmp_path / "Annotations").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "JPEGImages" / "f.jpg"), np.zeros((size[1], size[0], 3), np.uint8))
    xml = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, (a, b, c, d) in objects
    )
    path = tmp_path / "Annotations" / "f.xml"
    path.write_text(
        f"<annotation><filename>f.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{xml}</annotation>"
    )
    return path


def test_voc_quirks_are_repaired_with_a_note(tmp_path):
    path = _voc_file(
        tmp_path,
        [
            ("WBC", (300, 200, 101, 120)),  # xmin > xmax
            ("RBC", (600, 400, 700, 500)),  # beyond the frame
            ("RBC", (50, 50, 50, 50)),  # a point
            ("WBC", (10, 10, 40, 38)),  # 31 x 29: a platelet labelled WBC
            ("Platelets", (5, 5, 20, 20)),
        ],
    )
    frame = parse_annotation(path, tmp_path / "JPEGImages")
    kinds = [(b.kind, b.ignore) for b in frame.boxes]
    assert kinds == [("wbc", False), ("rbc", False), ("wbc", True), ("platelet", False)]
    wbc = frame.of("wbc")[0]
    assert (wbc.x0, wbc.y0, wbc.x1, wbc.y1) == (100, 119, 300, 200)
    rbc = frame.of("rbc")[0]
    assert (rbc.x1, rbc.y1) == (640, 480)
    notes = " | ".join(frame.notes)
    for words in (
        "corners swapped",
        "beyond the 640x480 frame: clipped",
        "1x1 px: dropped",
        "too small for a white",
    ):
        assert words in notes
    t = truth(frame)
    assert t.boxes.shape == (1, 4) and t.ignore.shape == (1, 4)


def test_voc_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="not a Pascal VOC folder"):
        read_voc(tmp_path)
    path = _voc_file(tmp_path, [])
    path.write_text("<annotation><size><width>x</width></size></annotation>")
    with pytest.raises(DataError, match="not a number"):
        read_voc(tmp_path)


def test_split_is_by_name_and_keeps_near_duplicates_together(tmp_path):
    root = make_voc_dataset(tmp_path / "voc", frames=30, seed=1)
    frames = read_voc(root)
    assigned = assign_splits(frames)
    assert assigned == assign_splits(read_voc(root))  # deterministic
    assert all(assigned[f.stem] == split_of(f.stem) for f in frames)  # no duplicates yet
    assert 2 <= sum(v == "val" for v in assigned.values()) <= 12
    # a copy of a train frame under a name that hashes to val goes to train with its original
    train = next(f for f in frames if assigned[f.stem] == "train")
    name = next(f"zz_{i}" for i in range(1000) if split_of(f"zz_{i}") == "val")
    image = cv2.imread(str(train.image))
    cv2.imwrite(
        str(root / "JPEGImages" / f"{name}.jpg"), np.clip(image.astype(int) + 3, 0, 255).astype(np.uint8)
    )
    write_voc_annotation(root / "Annotations" / f"{name}.xml", f"{name}.jpg", 640, 480, [])
    frames = read_voc(root)
    assert [(a, b) for a, b, _ in near_duplicates(frames)] == [(train.stem, name)]
    assert assign_splits(frames)[name] == "train"


# --- AP --------------------------------------------------------------------------------------------


def _det(box, score):
    x0, y0, x1, y1 = box
    return Detection((x0, y0, x1 - x0, y1 - y0), score, "wbc")


def test_average_precision_of_known_rankings():
    t = FrameTruth(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.zeros((0, 4)))
    perfect = [_det((0, 0, 10, 10), 0.9), _det((20, 20, 30, 30), 0.8)]
    r = evaluate([(perfect, t)], 0.5)
    assert r.ap50 == 1.0 and r.ap50_95 == 1.0 and r.precision == 1.0 and r.recall == 1.0
    # a false positive ranked first: precision 0, 1/2, 2/3 -> envelope 2/3 over all recall points
    fp_first = [_det((50, 50, 60, 60), 0.95), *perfect]
    assert evaluate([(fp_first, t)], 0.5).ap50 == pytest.approx(2 / 3, abs=1e-4)  # rounded to 4 places
    # a box shifted by 2 px (IoU 0.67) counts at 0.5 and 0.65, not from 0.7 on
    shifted = [_det((2, 0, 12, 10), 0.9), _det((20, 20, 30, 30), 0.8)]
    r = evaluate([(shifted, t)], 0.5)
    # from 0.7 the better-scored box is a false positive: precision 1/2 up to recall 1/2
    assert (
        r.ap50 == 1.0
        and r.ap_by_iou["0.65"] == 1.0
        and r.ap_by_iou["0.70"] == pytest.approx(0.5 * 51 / 101, abs=1e-4)
    )
    # one cell missed: recall stops at 0.5
    assert evaluate([(perfect[:1], t)], 0.5).ap50 == pytest.approx(51 / 101, abs=1e-4)
    assert average_precision(np.array([]), np.array([])) == 0.0


def test_threshold_precision_recall_and_ignored_boxes():
    t = FrameTruth(np.array([[0, 0, 10, 10]], float), np.array([[40, 40, 50, 50]], float))
    dets = [_det((0, 0, 10, 10), 0.6), _det((40, 40, 50, 50), 0.9), _det((70, 70, 80, 80), 0.4)]
    assert match(sorted(dets, key=lambda d: -d.score), t, 0.5) == [None, True, False]
    r = evaluate([(dets, t), ([], FrameTruth(np.zeros((0, 4)), np.zeros((0, 4))))], 0.5)
    assert (r.hits, r.false_positives, r.misses, r.precision, r.recall) == (1, 0, 0, 1.0, 1.0)
    r = evaluate([(dets, t)], 0.3)
    assert r.false_positives == 1 and r.false_positives_per_frame == 1.0 and r.precision == 0.5
    assert threshold_for_recall([(dets, t)], 1.0) == pytest.approx(0.6)


# --- the classical baseline ------------------------------------------------------------------------


def test_classical_finds_drawn_white_cells_and_not_red_ones():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(5):
        image, boxes = render_field(rng, 640, 480, center_class="round", n_extra=0)
        dets, ms = ClassicalDetector().detect(image, threshold=0.1)  # fitted on real frames' scale
        x, y, w, h = boxes[0][1]
        t = FrameTruth(np.array([[x, y, x + w, y + h]], float), np.zeros((0, 4)))
        hits += any(m for m in match(dets, t, 0.3))
        assert set(ms) == {"preprocess", "invoke", "decode"}
    assert hits == 5
    empty, _ = render_field(rng, 640, 480)
    assert ClassicalDetector().detect(empty, threshold=0.1)[0] == []


def test_operating_threshold_takes_the_margin_or_the_recall():
    t = FrameTruth(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.zeros((0, 4)))
    separable = [_det((0, 0, 10, 10), 0.6), _det((20, 20, 30, 30), 0.9), _det((50, 50, 60, 60), 0.2)]
    thr, how = operating_threshold([(separable, t)], 0.995)
    # logit(0.2) = -1.386, logit(0.6) = 0.405: the midpoint -0.49 is a score of 0.38
    assert thr == pytest.approx(0.38, abs=0.005) and "halfway" in how
    overlapping = [_det((0, 0, 10, 10), 0.6), _det((20, 20, 30, 30), 0.9), _det((50, 50, 60, 60), 0.7)]
    thr, how = operating_threshold([(overlapping, t)], 0.995)
    assert thr == pytest.approx(0.6) and "finds" in how
