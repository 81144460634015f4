"""Which microscope field the frames show: the stage motion between frames, and when it left a field.

edge/motion.py compares each frame's thumbnail with the previous one: how far the view moved, and
how alike the two views are once that shift is undone. A still or slowly moving stage stays alike
(0.96-1.0 here, camera noise and motion blur included) and the shift lets the tracker follow its
cells; two unrelated views (the stage jumped, a replay moved to another image) are not (BCCD fields:
0.03 median, 0.33 at the 99th percentile): a jump, after which the tracker forgets every cell. A
new field starts at a jump, or once the view has drifted by `new_field_shift` of its size from where
the field began, so "fields seen" counts the places a technician looked at.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import cv2
import numpy as np

from edge.motion import match, thumbnail
from edge.runtime.tflite import usable_cores


@dataclass(frozen=True)
class FieldStep:
    shift: tuple[float, float]  # image pixels the view moved since the previous frame
    jumped: bool  # not the view of the previous frame
    new_field: bool
    field: int  # 1-based index of the field this frame belongs to
    similarity: float


class FieldWatch:
    def __init__(self, min_similarity: float = 0.6, new_field_shift: float = 0.5):
        self.min_similarity = float(min_similarity)
        self.new_field_shift = float(new_field_shift)
        self.fields = 0
        self._prev: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._drift = np.zeros(2)

    def update(
        self,
        image: np.ndarray,
        order: str = "BGR",
        image_width: int | None = None,
        new_field_shift: float | None = None,
    ) -> FieldStep:
        """`image` is the frame, or a smaller copy of it (the detector's input) whose full-size width
        is `image_width`: shifts are always in the frame's pixels. `new_field_shift`: this frame's
        drift limit instead of the watch's (cell mode: half its region, which may change with the
        scale)."""
        thumb, scale = thumbnail(image, order=order)
        if image_width:
            scale *= image.shape[1] / image_width
        if self._prev is None or self._prev.shape != thumb.shape:
            self._prev, self._drift = thumb, np.zeros(2)
            self._window = cv2.createHanningWindow(thumb.shape[::-1], cv2.CV_32F)
            self.fields += 1
            return FieldStep((0.0, 0.0), True, True, self.fields, 0.0)
        (dx, dy), similarity = match(self._prev, thumb, self._window)
        self._prev = thumb
        jumped = not similarity >= self.min_similarity  # NaN (a blank view) is a jump too
        shift = (0.0, 0.0) if jumped else (dx / scale, dy / scale)
        self._drift = np.zeros(2) if jumped else self._drift + np.array([dx, dy])
        limit = self.new_field_shift if new_field_shift is None else new_field_shift
        drifted = bool(np.abs(self._drift).max() >= limit * min(thumb.shape))
        if jumped or drifted:
            self.fields += 1
            self._drift = np.zeros(2)
        return FieldStep(shift, jumped, jumped or drifted, self.fields, float(similarity))


class MotionCheck:
    """A FieldWatch whose update runs beside the frame's classification: `start` it when the frame's
    cells are cut, and take its `result` once they are classified. What the model sees never depends
    on the stage motion (only which cells are counted does), and preprocessing leaves a core idle, so
    on 2 cores the check (0.4-0.7 ms a frame, docs/bench.md) no longer adds to the frame's latency.
    One worker thread: frames are compared in the order they were started. On one usable core the
    update runs at once in the caller's thread, where a hand-off would only cost."""

    def __init__(self, watch: FieldWatch, cores: int | None = None):
        self.watch = watch
        beside = (usable_cores() if cores is None else cores) > 1
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="edge-motion") if beside else None
        self._pending: Future | None = None

    def _update(self, *args, **kwargs) -> tuple[FieldStep, float]:
        t0 = time.perf_counter()
        step = self.watch.update(*args, **kwargs)
        return step, (time.perf_counter() - t0) * 1000

    def start(self, *args, beside: bool = True, **kwargs) -> None:
        """Begin FieldWatch.update(*args, **kwargs) for the next frame; `beside` False: run it now, in
        this thread (the other cores are busy: field mode's threaded layout detects the next frame there)."""
        if self._pending is not None:  # its frame failed before result(): never two updates at once
            wait([self._pending])
        if self._worker is not None and beside:
            self._pending = self._worker.submit(self._update, *args, **kwargs)
            return
        self._pending = Future()
        try:
            self._pending.set_result(self._update(*args, **kwargs))
        except Exception as exc:  # raised by result(), in the frame's own thread, as from the worker
            self._pending.set_exception(exc)

    def result(self) -> tuple[FieldStep, float]:
        """The started frame's step, and the milliseconds its update took (waiting for it if needed)."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("MotionCheck.result() before start()")
        return pending.result()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
