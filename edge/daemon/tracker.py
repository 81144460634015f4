"""Counting each white cell once while it stays in view: IoU matching with a short memory.

Each frame's detections are matched to the tracks of the cells seen in the last few frames, best
overlap first (IoU of the detection with the track's last box, shifted by the stage motion that
edge/daemon/fields.py measured). A detection that matches no track starts one: that cell is new and
is counted. A track unseen for more than `max_age_frames` frames or `max_age_s` seconds, whichever
comes first, is forgotten; if its cell comes back after that, it is counted again (docs/field.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.detect.decode import iou_matrix


@dataclass
class Track:
    id: int
    box: np.ndarray  # x0 y0 x1 y1 where it was last seen
    first_frame: int
    last_frame: int
    last_seen_s: float
    hits: int = 1


@dataclass(frozen=True)
class Assignment:
    track_id: int
    new: bool  # the track started with this detection: a cell to count


class IoUTracker:
    def __init__(self, min_iou: float = 0.3, max_age_frames: int = 10, max_age_s: float = 2.0):
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], not {min_iou}")
        self.min_iou = float(min_iou)
        self.max_age_frames = int(max_age_frames)
        self.max_age_s = float(max_age_s)
        self.tracks: list[Track] = []
        self.next_id = 1
        self.frame = -1

    @property
    def started(self) -> int:
        """Tracks started so far: cells counted."""
        return self.next_id - 1

    def reset(self) -> None:
        """Forget every track (the stage jumped to another field: nothing in view is the same cell)."""
        self.tracks = []

    def update(self, boxes, t_s: float, shift: tuple[float, float] = (0.0, 0.0)) -> list[Assignment]:
        """One frame's boxes (x0 y0 x1 y1, image pixels) at time `t_s` (seconds); `shift` is how far the
        view moved since the previous frame (dx, dy). Returns one Assignment per box, in order."""
        self.frame += 1
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.tracks = [
            t
            for t in self.tracks
            if self.frame - t.last_frame <= self.max_age_frames and t_s - t.last_seen_s <= self.max_age_s
        ]
        moved = np.array([t.box for t in self.tracks]).reshape(-1, 4) + np.array([*shift, *shift])
        overlaps = (
            iou_matrix(boxes, moved) if len(boxes) and len(moved) else np.zeros((len(boxes), len(moved)))
        )
        out: list[Assignment | None] = [None] * len(boxes)
        used: set[int] = set()
        # best overlap first: a cell keeps its track even when a neighbour overlaps it a little
        for flat in np.argsort(-overlaps, axis=None, kind="stable"):
            i, j = divmod(int(flat), overlaps.shape[1])
            if overlaps[i, j] < self.min_iou:
                break
            if out[i] is not None or j in used:
                continue
            track = self.tracks[j]
            track.box, track.last_frame, track.last_seen_s = boxes[i], self.frame, t_s
            track.hits += 1
            used.add(j)
            out[i] = Assignment(track.id, False)
        for i in range(len(boxes)):
            if out[i] is None:
                track = Track(self.next_id, boxes[i], self.frame, self.frame, t_s)
                self.next_id += 1
                self.tracks.append(track)
                out[i] = Assignment(track.id, True)
        return out  # type: ignore[return-value]
