"""`replay:DIR` or `replay:VIDEO`: play saved images (sorted, recursively, as edge/image_files.py
finds them) or a video file.

With `--fps` it behaves like a camera at that rate (live: the oldest frame is dropped when the
pipeline falls behind). Without, it feeds frames as fast as the pipeline takes them, never dropping.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from edge.daemon.config import ConfigError
from edge.daemon.sources import CorruptFrame, Frame, FrameSource, Pacer, SourceError
from edge.image_files import images_in, printable
from edge.preprocess import load_image, to_bgr8


class Source(FrameSource):
    kind = "replay"

    def __init__(self, target, config, **_):
        super().__init__(target, config)
        self.path = Path(target)
        if not target or not self.path.exists():
            raise ConfigError(f"source.uri: replay path {target!r} not found (replay:DIR or replay:VIDEO)")
        self.live = config.fps > 0
        self.files: list[Path] | None = None
        if self.path.is_dir():
            self.files = images_in(self.path)
            if not self.files:
                raise ConfigError(f"source.uri: no images in replay folder {self.path}")
        self.capture = None
        self.index = 0

    def open(self) -> None:
        self.pacer = Pacer(self.config.fps)
        if self.files is None and self.capture is None:
            self.capture = cv2.VideoCapture(str(self.path))
            if not self.capture.isOpened():
                raise SourceError(f"{self.path}: OpenCV cannot open this video")

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    def _next_file(self) -> Frame | None:
        if self.index >= len(self.files):
            if not self.config.loop:
                return None
            self.index = 0
        path = self.files[self.index]
        self.index += 1
        # The name as stored and printed: lossless for any bytes (edge.image_files.printable), as the folder
        # source does; a name that is not UTF-8 would otherwise stop the daemon at the SQLite insert.
        ref = printable(path.relative_to(self.path))
        try:
            image = to_bgr8(load_image(path))
        except Exception as exc:  # any failure of one file is that file's record, never the daemon's end
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {str(exc)[:200]}"
            raise CorruptFrame(ref, reason) from None
        return Frame(image=image, ref=ref)

    def _next_video_frame(self) -> Frame | None:
        ok, image = self.capture.read()
        if not ok and self.config.loop:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.index = 0
            ok, image = self.capture.read()
        if not ok:
            return None
        self.index += 1
        return Frame(image=to_bgr8(image), ref=f"{printable(self.path.name)}#{self.index - 1}")

    def wait_for_next(self) -> None:
        self.pacer.wait()

    def read(self) -> Frame | None:
        return self._next_file() if self.files is not None else self._next_video_frame()
