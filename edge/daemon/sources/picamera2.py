"""`picamera2` or `picamera2:N`: a Raspberry Pi camera through libcamera.

Two streams from one request: `main` at full resolution for the archive and the page, and `lores`,
scaled by the ISP, for inference, so the CPU never resizes a 12 MP frame. Exposure and white
balance run on auto for `settle_s`, then are locked at the values they settled on (or at fixed
values from the config), so the stain colours the model sees do not drift from cell to cell.

Memory layouts (picamera2 manual): "RGB888" is B, G, R per pixel, i.e. OpenCV's BGR; "BGR888" is
R, G, B; "XRGB8888" is B, G, R, A; YUV420 lores arrives as an (h * 3 / 2) x w I420 plane stack.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from edge.daemon.sources import CorruptFrame, Frame, FrameSource, SourceError
from edge.errors import MissingExtraError

_TO_BGR = {
    "RGB888": None,
    "BGR888": cv2.COLOR_RGB2BGR,
    "XRGB8888": cv2.COLOR_BGRA2BGR,
    "XBGR8888": cv2.COLOR_RGBA2BGR,
    "YUV420": cv2.COLOR_YUV2BGR_I420,
}


def lores_to_bgr(array: np.ndarray, fmt: str, size: tuple[int, int]) -> np.ndarray:
    """A lores array in picamera2's memory layout -> BGR uint8 H x W x 3 (ValueError if malformed)."""
    w, h = size
    if fmt == "YUV420":
        # picamera2 may pad the stride; keep the visible width.
        if array.ndim != 2 or array.shape[0] != h * 3 // 2 or array.shape[1] < w:
            raise ValueError(f"YUV420 lores of shape {array.shape}, expected ({h * 3 // 2}, {w})")
        return cv2.cvtColor(np.ascontiguousarray(array[:, :w]), _TO_BGR[fmt])
    channels = 3 if fmt in ("RGB888", "BGR888") else 4
    if array.ndim != 3 or array.shape[2] != channels:
        raise ValueError(f"{fmt} lores of shape {array.shape}, expected H x W x {channels}")
    code = _TO_BGR[fmt]
    return array if code is None else cv2.cvtColor(array, code)


class Source(FrameSource):
    kind = "picamera2"
    live = True

    def __init__(self, target, config, **_):
        super().__init__(target or "0", config)
        self.options = config.picamera2
        self.camera_num = int(self.target) if self.target.isdigit() else self.options.camera
        self.camera = None
        self.locked: dict = {}
        self.count = 0

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise MissingExtraError("edge run --source picamera2", "pi", "picamera2") from None
        o = self.options
        try:
            camera = Picamera2(self.camera_num)
            # FrameDurationLimits (microseconds) is the libcamera control every picamera2 version knows.
            period = int(1_000_000 / self.config.fps) if self.config.fps else 0
            controls = {"FrameDurationLimits": (period, period)} if period else {}
            config = camera.create_preview_configuration(
                main={"size": tuple(o.main_size), "format": "RGB888"},
                lores={"size": tuple(o.lores_size), "format": o.lores_format},
                buffer_count=4,
                controls=controls,
            )
            camera.configure(config)
            camera.start()
            self.camera = camera
            self.locked = self._settle_and_lock(camera)
        except Exception as exc:  # libcamera reports a missing or busy camera as RuntimeError/IndexError
            self.close()
            raise SourceError(f"picamera2 camera {self.camera_num}: {exc}") from None

    def _settle_and_lock(self, camera) -> dict:
        o = self.options
        metadata = camera.capture_metadata()
        deadline = time.monotonic() + o.settle_s
        while time.monotonic() < deadline:  # let auto exposure / white balance converge
            metadata = camera.capture_metadata()
        controls: dict = {}
        if o.lock_exposure or o.exposure_time_us:
            controls["AeEnable"] = False
            controls["ExposureTime"] = int(o.exposure_time_us or metadata["ExposureTime"])
        if o.lock_exposure or o.analogue_gain:
            controls["AeEnable"] = False
            controls["AnalogueGain"] = float(o.analogue_gain or metadata["AnalogueGain"])
        if o.lock_white_balance or o.colour_gains:
            controls["AwbEnable"] = False
            controls["ColourGains"] = tuple(float(g) for g in (o.colour_gains or metadata["ColourGains"]))
        if controls:
            camera.set_controls(controls)
        return controls

    def close(self) -> None:
        camera, self.camera = self.camera, None
        if camera is None:
            return
        try:
            camera.stop()
        finally:
            camera.close()

    def read(self) -> Frame:
        if self.camera is None:
            raise SourceError("picamera2: not open")
        try:
            (main, lores), metadata = self.camera.capture_arrays(["main", "lores"])
        except Exception as exc:
            raise SourceError(f"picamera2 camera {self.camera_num}: capture failed ({exc})") from None
        self.count += 1
        ref = f"picamera2:{self.camera_num}#{metadata.get('SensorTimestamp', self.count)}"
        try:
            image = lores_to_bgr(lores, self.options.lores_format, tuple(self.options.lores_size))
        except ValueError as exc:
            raise CorruptFrame(ref, str(exc)) from None
        if main.ndim != 3 or main.shape[2] != 3:
            raise CorruptFrame(ref, f"main stream of shape {main.shape}, expected H x W x 3")
        return Frame(image=image, display=main, ref=ref)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "locked_controls": {k: list(v) if isinstance(v, tuple) else v for k, v in self.locked.items()},
        }
