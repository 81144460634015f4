"""Frame sources for the benchmark: `sim` (synthetic microscope fields, no camera, no data),
`replay:DIR` (image files, read and decoded per frame) and `camera[:N|DEVICE|URL]` (OpenCV).

Every source hands out BGR uint8 frames, as OpenCV and picamera2's "RGB888" do.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, ImageLoadError
from edge.preprocess import IMAGE_SUFFIXES, load_image
from edge.synthetic import CLASSES, render_field

SIM_POOL = 8  # distinct pre-rendered fields, so caches do not see the same bytes every frame


class SourceError(EdgeError):
    """A --source that cannot be parsed or opened."""

    exit_code = 2


class SimSource:
    """Synthetic fields rendered before timing starts: `capture` then costs what handing over a
    frame buffer costs, and the numbers exclude the renderer (which is not a camera)."""

    kind = "sim"

    def __init__(self, width: int = 640, height: int = 480, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.frames = [
            render_field(rng, width, height, center_class=CLASSES[i % len(CLASSES)])[0]
            for i in range(SIM_POOL)
        ]
        self.size = (width, height)
        self._i = 0

    def read(self) -> np.ndarray:
        frame = self.frames[self._i % len(self.frames)]
        self._i += 1
        return frame

    def describe(self) -> dict:
        w, h = self.size
        return {"kind": self.kind, "frame": f"{w}x{h}", "note": f"{SIM_POOL} pre-rendered synthetic fields"}

    def close(self) -> None:
        pass


class ReplaySource:
    """Image files from a folder, in name order, cycling; each frame is read from disk and decoded."""

    kind = "replay"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: replay folder not found")
        self.files = sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise SourceError(f"{self.folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) to replay")
        self._i = 0
        self.skipped: dict[str, str] = {}

    def read(self) -> np.ndarray:
        for _ in range(len(self.files)):
            path = self.files[self._i % len(self.files)]
            self._i += 1
            try:
                return load_image(path)
            except ImageLoadError as exc:  # one bad file must not stop the benchmark; it is reported
                self.skipped[str(path)] = exc.reason
        raise SourceError(f"{self.folder}: none of the {len(self.files)} images could be decoded")

    def describe(self) -> dict:
        info = {"kind": self.kind, "folder": str(self.folder), "files": len(self.files)}
        if self.skipped:
            info["skipped"] = self.skipped
        return info

    def close(self) -> None:
        pass


class CameraSource:
    """An OpenCV capture device: index, /dev/videoN, a URL or a GStreamer pipeline. `capture`
    includes waiting for the next frame, so it is bounded below by the camera's frame rate."""

    kind = "camera"

    def __init__(self, target: str | int = 0):
        import cv2

        self.target = target
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            raise SourceError(f"camera {target!r} could not be opened (is it connected and free?)")
        self._last_shape = None

    def read(self) -> np.ndarray:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise SourceError(f"camera {self.target!r} returned no frame")
        self._last_shape = frame.shape
        return frame

    def describe(self) -> dict:
        info = {"kind": self.kind, "device": str(self.target)}
        if self._last_shape is not None:
            info["frame"] = f"{self._last_shape[1]}x{self._last_shape[0]}"
        return info

    def close(self) -> None:
        self.cap.release()


def open_source(spec: str):
    """`sim`, `sim:WxH`, `replay:DIR`, `camera`, `camera:N`, `camera:/dev/video0` -> a source."""
    kind, _, arg = spec.partition(":")
    if kind == "sim":
        if not arg:
            return SimSource()
        match = re.fullmatch(r"(\d+)x(\d+)", arg)
        if not match or not (32 <= int(match.group(1)) <= 8192 and 32 <= int(match.group(2)) <= 8192):
            raise SourceError(f"--source {spec}: expected sim or sim:WIDTHxHEIGHT, e.g. sim:1280x720")
        return SimSource(int(match.group(1)), int(match.group(2)))
    if kind == "replay":
        if not arg:
            raise SourceError("--source replay needs a folder: replay:DIR")
        return ReplaySource(arg)
    if kind == "camera":
        target = arg or "0"
        return CameraSource(int(target) if target.isdigit() else target)
    raise SourceError(f"--source {spec}: unknown source; use sim, sim:WxH, replay:DIR or camera[:N|DEVICE]")
