"""Frame sources for the benchmark: `sim` (synthetic microscope fields, no camera, no data),
`replay:DIR` (image files, read and decoded per frame) and cameras through the daemon's own sources
(`camera[:N]` / `opencv:TARGET`, `picamera2[:N]`).

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


class DaemonSource:
    """A camera through `edge run`'s own sources (edge/daemon/sources), so the bench captures exactly
    as the daemon does: `camera[:N|/dev/videoN]` / `opencv:TARGET` (OpenCV, V4L2, GStreamer) and
    `picamera2[:N]` (its lores stream). `capture` includes waiting for the camera's next frame."""

    kind = "camera"

    def __init__(self, uri: str):
        try:
            from edge.daemon.config import SourceConfig
            from edge.daemon.sources import CorruptFrame
            from edge.daemon.sources import SourceError as DaemonSourceError
            from edge.daemon.sources import open_source as open_daemon_source
        except ImportError as exc:
            raise SourceError(f"--source {uri}: camera sources need edge.daemon ({exc})") from None
        self.uri, self._corrupt, self._failed = uri, CorruptFrame, DaemonSourceError
        self.skipped = 0
        self._shape = None
        try:
            self.source = open_daemon_source(SourceConfig(uri=uri))
            self.source.open()
        except (DaemonSourceError, EdgeError, ValueError) as exc:
            raise SourceError(f"--source {uri}: {exc}") from None

    def read(self) -> np.ndarray:
        for _ in range(100):
            try:
                frame = self.source.read()
            except self._corrupt:  # one bad frame is skipped and counted, as the daemon does
                self.skipped += 1
                continue
            except self._failed as exc:
                raise SourceError(f"--source {self.uri}: {exc}") from None
            if frame is None:
                raise SourceError(f"--source {self.uri}: the source has no more frames")
            self._shape = frame.image.shape
            return frame.image
        raise SourceError(f"--source {self.uri}: 100 corrupt frames in a row")

    def describe(self) -> dict:
        info = {"kind": self.kind, "uri": self.uri}
        if self._shape is not None:
            info["frame"] = f"{self._shape[1]}x{self._shape[0]}"
        if self.skipped:
            info["corrupt_frames_skipped"] = self.skipped
        return info

    def close(self) -> None:
        self.source.close()


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
    if kind in ("camera", "opencv"):
        return DaemonSource(f"opencv:{arg or '0'}")
    if kind == "picamera2":
        return DaemonSource(spec)
    raise SourceError(
        f"--source {spec}: unknown source; use sim, sim:WxH, replay:DIR, camera[:N|/dev/videoN], opencv:TARGET "
        "or picamera2[:N]"
    )
