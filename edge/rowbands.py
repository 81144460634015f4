"""Run a row-separable OpenCV call as two row bands at once: the top band here, the bottom band on
one helper thread.

Why: OpenCV parallelises colour conversion and resizing only above 64k output pixels
(`parallel_for_` with `nstripes = pixels / 2**16`), so at the model's 224 x 224 every one of them
runs on one core while the other idles. Preprocessing sits on the critical path of every frame
(capture -> preprocess -> invoke), so this halves most of it on a two-core Pi.

Exact by construction: callers only split per-pixel operations (colour conversion) and the exact
2x INTER_AREA halving at an even row, so the output is byte-identical to the one-call version
(tests/test_preprocess.py checks it against OpenCV called whole).

When the helper is already busy (several threads preprocessing at once, as in batch evaluation),
the caller does both bands itself rather than queue: no thread ever waits for another's frame.

Measured here (`edge bench`, frames back to back): preprocess p50 2.25-2.30 -> 1.84-1.90 ms. In the
daemon at 20 fps it gains nothing measurable: after 50 ms idle, waking the helper costs ~0.2 ms on
this VM, about what the second core saves.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import cv2
import numpy as np

# Below this many output pixels per call the hand-off (15 us hot, ~0.2 ms after the cores idled)
# costs more than half the work saves.
MIN_PIXELS = 16_384

Band = Callable[[np.ndarray, np.ndarray], object]


class _Helper:
    def __init__(self):
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            task = self._tasks.get()
            try:
                task()
                self._done.put(None)
            except BaseException as exc:  # handed back to the caller, re-raised there
                self._done.put(exc)

    def both(self, top: Callable[[], object], bottom: Callable[[], object]) -> None:
        if not self._lock.acquire(blocking=False):
            top()
            bottom()
            return
        try:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="edge-preprocess-band", daemon=True)
                self._thread.start()
            self._tasks.put(bottom)
            try:
                top()
            finally:
                error = self._done.get()  # always collect the bottom band before releasing the helper
            if error is not None:
                raise error
        finally:
            self._lock.release()


_helper = _Helper()


def _reset_after_fork() -> None:
    # A forked child inherits neither the helper thread nor a sane lock state.
    global _helper
    _helper = _Helper()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def enabled() -> bool:
    """Split only with a second core to use, only if OpenCV itself may use threads
    (cv2.setNumThreads(1) opts out of both), and unless EDGE_ROW_BANDS=0 (for A/B measurements)."""
    return (os.cpu_count() or 1) > 1 and cv2.getNumThreads() > 1 and os.environ.get("EDGE_ROW_BANDS", "1") != "0"


def by_rows(op: Band, src: np.ndarray, dst: np.ndarray, src_rows_per_dst_row: int = 1) -> np.ndarray:
    """dst = op(src, dst) computed as two row bands. `op` must write dst in place (OpenCV's `dst=`)
    and be row-separable at the split; `src_rows_per_dst_row` is 2 for an exact 2x halving."""
    k = src_rows_per_dst_row

    def band(rows: slice) -> Callable[[], None]:
        src_rows = slice(rows.start * k if rows.start else None, rows.stop * k if rows.stop else None)
        out = dst[rows]

        def run() -> None:
            result = op(src[src_rows], out)
            if result is not None and result is not out:  # OpenCV reallocated instead of writing in place
                out[...] = result

        return run

    if dst.shape[0] < 2 or dst.shape[0] * dst.shape[1] < MIN_PIXELS or not enabled():
        band(slice(None, None))()
        return dst
    mid = dst.shape[0] // 2
    _helper.both(band(slice(None, mid)), band(slice(mid, None)))
    return dst
