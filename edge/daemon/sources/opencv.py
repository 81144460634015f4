"""`opencv:0`, `opencv:/dev/video2`, `opencv:rtsp://...` or `opencv:gst:PIPELINE`.

A V4L2 device index or path (USB microscope cameras), any URL or file OpenCV opens, or a GStreamer
pipeline string ending in `appsink` (Jetson CSI cameras through nvarguscamerasrc).
"""

from __future__ import annotations

import cv2

from edge.daemon.config import ConfigError
from edge.daemon.sources import CorruptFrame, Frame, FrameSource, SourceError
from edge.preprocess import to_bgr8


def capture_args(target: str) -> tuple[object, int]:
    """The (filename or index, apiPreference) pair for cv2.VideoCapture."""
    if target.startswith("gst:"):
        return target[4:], cv2.CAP_GSTREAMER
    if target.isdigit():
        return int(target), cv2.CAP_V4L2
    if target.startswith("/dev/video"):
        return target, cv2.CAP_V4L2
    return target, cv2.CAP_ANY


class Source(FrameSource):
    kind = "opencv"
    live = True

    def __init__(self, target, config, **_):
        super().__init__(target, config)
        if not target:
            raise ConfigError("source.uri: opencv needs a device index, path or gst:PIPELINE (e.g. opencv:0)")
        self.options = config.opencv
        self.capture = None
        self.count = 0

    def open(self) -> None:
        what, api = capture_args(self.target)
        capture = cv2.VideoCapture(what, api)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.target}: OpenCV cannot open the camera")
        o = self.options
        if o.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*o.fourcc[:4].ljust(4)))
        if o.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, o.width)
        if o.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, o.height)
        if o.fps or self.config.fps:
            capture.set(cv2.CAP_PROP_FPS, o.fps or self.config.fps)
        self.capture = capture

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    def read(self) -> Frame:
        if self.capture is None:
            raise SourceError(f"{self.target}: not open")
        # read() returns False for an unplugged camera (and at the end of a file): reconnect.
        ok, image = self.capture.read()
        if not ok or image is None:
            raise SourceError(f"{self.target}: no frame (camera disconnected?)")
        self.count += 1
        ref = f"{self.target}#{self.count}"
        if image.size == 0:
            raise CorruptFrame(ref, "empty frame")
        try:
            image = to_bgr8(image)
        except ValueError as exc:
            raise CorruptFrame(ref, str(exc)) from None
        return Frame(image=image, ref=ref)
