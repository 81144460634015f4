"""Counting each cell once: the IoU tracker, the field watch (stage motion, jumps, new fields)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.daemon.fields import FieldWatch, MotionCheck
from edge.daemon.tracker import IoUTracker
from edge.synthetic import render_field

A = (100, 100, 200, 200)
B = (400, 300, 480, 380)


def test_a_still_cell_is_one_track_and_counted_once():
    t = IoUTracker()
    first = t.update([A, B], 0.0)
    assert [a.new for a in first] == [True, True]
    for k in range(1, 100):  # 10 s at 10 fps, a pixel of jitter
        again = t.update([np.add(B, k % 2), np.add(A, -(k % 2))], k / 10)
        assert [a.track_id for a in again] == [first[1].track_id, first[0].track_id]
        assert not any(a.new for a in again)
    assert t.started == 2


def test_a_missed_frame_or_two_is_forgiven_a_long_absence_is_not():
    t = IoUTracker(max_age_frames=3, max_age_s=10.0)
    (a,) = t.update([A], 0.0)
    t.update([], 0.1)
    t.update([], 0.2)
    assert t.update([A], 0.3)[0] == a.__class__(a.track_id, False)  # two frames missed: same cell
    for k in range(4):
        t.update([], 0.4 + k / 10)
    assert t.update([A], 0.9)[0].new  # four frames missed: forgotten, counted again
    assert t.started == 2


def test_memory_in_seconds_for_slow_sources():
    t = IoUTracker(max_age_frames=100, max_age_s=1.0)
    t.update([A], 0.0)
    assert not t.update([A], 0.9)[0].new
    assert t.update([A], 2.5)[0].new  # a hot folder 1.6 s later: another cell


def test_best_overlap_wins_and_neighbours_stay_apart():
    t = IoUTracker(min_iou=0.3)
    left, right = (100, 100, 200, 200), (180, 100, 280, 200)  # touching cells, IoU 0.11
    ids = [a.track_id for a in t.update([left, right], 0.0)]
    moved = t.update([(185, 100, 285, 200), (105, 100, 205, 200)], 0.1)
    assert [a.track_id for a in moved] == ids[::-1] and not any(a.new for a in moved)


def test_stage_shift_lets_a_moving_cell_keep_its_track():
    t = IoUTracker()
    (a,) = t.update([A], 0.0)
    shifted = np.add(A, [70, 0, 70, 0])  # moved 70 px: IoU with the old box 0.18
    assert t.update([shifted], 0.1)[0].new is True
    t2 = IoUTracker()
    t2.update([A], 0.0)
    assert t2.update([shifted], 0.1, shift=(70.0, 0.0))[0].new is False


def test_reset_forgets_everything():
    t = IoUTracker()
    t.update([A], 0.0)
    t.reset()
    assert t.update([A], 0.1)[0].new


def test_min_iou_is_checked():
    with pytest.raises(ValueError):
        IoUTracker(min_iou=0.0)


def _noisy(image, rng, sigma=4):
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def test_field_watch_still_pan_and_jump():
    rng = np.random.default_rng(0)
    field, _ = render_field(rng, 640, 480, center_class="round", n_extra=2)
    other, _ = render_field(rng, 640, 480, center_class="lobed", n_extra=1)
    w = FieldWatch()
    first = w.update(field)
    assert first.new_field and first.field == 1
    for _ in range(10):  # still stage, camera noise
        step = w.update(_noisy(field, rng))
        assert not step.jumped and not step.new_field and step.similarity > 0.9
        assert abs(step.shift[0]) < 2 and abs(step.shift[1]) < 2
    moved = cv2.warpAffine(
        field, np.float32([[1, 0, 20], [0, 1, -8]]), (640, 480), borderMode=cv2.BORDER_REFLECT
    )
    step = w.update(moved)
    assert not step.jumped and step.shift == pytest.approx((20, -8), abs=3)
    jump = w.update(other)
    assert jump.jumped and jump.new_field and jump.field == 2
    assert w.fields == 2


def test_field_watch_counts_a_slow_pan_as_new_fields():
    rng = np.random.default_rng(1)
    wide, _ = render_field(rng, 1600, 480, center_class="round", n_extra=6)
    w = FieldWatch(new_field_shift=0.5)
    for x in range(0, 960, 16):  # 16 px a frame across 960 px: 1.5 frame widths
        step = w.update(wide[:, x : x + 640])
        assert not step.jumped or x == 0
    assert w.fields in (3, 4)  # a new field each ~half a view of drift (thumbnail px rounding)


@pytest.mark.parametrize("cores", [1, 2])
def test_the_motion_check_beside_the_classification_gives_the_watchs_own_steps(cores):
    # on a worker thread (2 cores) or at once (1 core): the same steps, in frame order, as FieldWatch
    rng = np.random.default_rng(2)
    wide, _ = render_field(rng, 1600, 480, center_class="round", n_extra=6)
    other, _ = render_field(rng, 640, 480, center_class="lobed", n_extra=1)
    frames = [_noisy(wide[:, x : x + 640], rng) for x in range(0, 640, 40)] + [other, other]
    plain = FieldWatch(new_field_shift=0.5)
    check = MotionCheck(FieldWatch(new_field_shift=0.5), cores=cores)
    assert (check._worker is None) == (cores == 1)
    for frame in frames:
        check.start(frame)
        step, ms = check.result()
        assert step == plain.update(frame) and ms >= 0
    assert check.watch.fields == plain.fields >= 3
    check.close()


@pytest.mark.parametrize("cores", [1, 2])
def test_a_failed_motion_check_is_raised_in_the_frames_own_thread(cores):
    check = MotionCheck(FieldWatch(), cores=cores)
    with pytest.raises(RuntimeError, match="before start"):
        check.result()
    check.start(np.zeros((0, 0, 3), np.uint8))  # no pixels: no scale for a thumbnail
    with pytest.raises(ZeroDivisionError):
        check.result()
    check.close()


def test_a_frame_that_never_settled_does_not_overlap_the_next_update():
    # a frame that failed between crops() and settle() leaves its update pending; the next frame's,
    # run in the caller's thread (field mode's threaded layout), waits for it first
    rng = np.random.default_rng(4)
    field, _ = render_field(rng, 640, 480, center_class="round", n_extra=2)
    check = MotionCheck(FieldWatch(), cores=2)
    check.start(field)
    check.start(_noisy(field, rng), beside=False)
    step, _ = check.result()
    assert not step.jumped and check.watch.fields == 1
    check.close()
