"""A test double of the picamera2 calls `edge run` uses, for machines without libcamera.

Faithful to picamera2's API and memory layouts (picamera2 manual, section 4 and appendix):
`Picamera2(camera_num)`, `create_preview_configuration / create_still_configuration /
create_video_configuration(main=, lores=, buffer_count=, controls=)` returning a dict,
`configure`, `start`, `stop`, `close`, `capture_array(name)`, `capture_arrays(names)` ->
(arrays, metadata), `capture_metadata()`, `set_controls(dict)`. "RGB888" arrays are B, G, R per
pixel; "YUV420" arrays are (h * 3 / 2) x w I420. Auto exposure and white balance drift towards a
target over frames until AeEnable / AwbEnable are set False. Install it with
`monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2)`.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.synthetic import render_field

instances: list[Picamera2] = []


class Picamera2:
    # Knobs for tests: fail the Nth capture with RuntimeError (libcamera's error type), or fail to open.
    fail_on_capture: int | None = None
    fail_to_open = False

    def __init__(self, camera_num: int = 0):
        if Picamera2.fail_to_open:
            raise RuntimeError(f"Failed to acquire camera: Device or resource busy (camera {camera_num})")
        self.camera_num = camera_num
        self.sensor_resolution = (4056, 3040)
        self.camera_config = None
        self.started = False
        self.closed = False
        self.controls: dict = {}
        self.control_log: list[dict] = []
        self.frames = 0
        self.exposure, self.gain, self.gains = 5000, 1.0, (1.0, 1.0)
        self.ae, self.awb = True, True
        self.rng = np.random.default_rng(camera_num)
        instances.append(self)

    # -- configuration --------------------------------------------------------------------------
    def _configuration(self, kind, main=None, lores=None, raw=None, buffer_count=4, controls=None, **_):
        main = {"format": "XBGR8888", "size": (640, 480), **(main or {})}
        if lores is not None:
            lores = {"format": "YUV420", **lores}
            if lores["size"][0] > main["size"][0] or lores["size"][1] > main["size"][1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
        return {
            "use_case": kind,
            "main": main,
            "lores": lores,
            "raw": raw,
            "buffer_count": buffer_count,
            "controls": dict(controls or {}),
        }

    def create_preview_configuration(
        self, main=None, lores=None, raw=None, buffer_count=4, controls=None, **kw
    ):
        return self._configuration("preview", main, lores, raw, buffer_count, controls, **kw)

    def create_still_configuration(
        self, main=None, lores=None, raw=None, buffer_count=1, controls=None, **kw
    ):
        return self._configuration("still", main, lores, raw, buffer_count, controls, **kw)

    def create_video_configuration(
        self, main=None, lores=None, raw=None, buffer_count=6, controls=None, **kw
    ):
        return self._configuration("video", main, lores, raw, buffer_count, controls, **kw)

    def configure(self, camera_config) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.camera_config = camera_config
        self.set_controls(camera_config.get("controls", {}))

    def start(self, config=None, show_preview=False) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.started = False
        self.closed = True

    def set_controls(self, controls: dict) -> None:
        self.control_log.append(dict(controls))
        self.controls.update(controls)
        if "AeEnable" in controls:
            self.ae = bool(controls["AeEnable"])
        if "AwbEnable" in controls:
            self.awb = bool(controls["AwbEnable"])
        if "ExposureTime" in controls:
            self.exposure = int(controls["ExposureTime"])
        if "AnalogueGain" in controls:
            self.gain = float(controls["AnalogueGain"])
        if "ColourGains" in controls:
            self.gains = tuple(controls["ColourGains"])

    # -- capture --------------------------------------------------------------------------------
    def _next_request(self) -> dict:
        if not self.started:
            raise RuntimeError("Camera is not started")
        self.frames += 1
        if Picamera2.fail_on_capture is not None and self.frames >= Picamera2.fail_on_capture:
            raise RuntimeError("Camera frontend has timed out!")
        if self.ae:  # auto algorithms converge towards their targets
            self.exposure += (20000 - self.exposure) // 4
            self.gain += (2.5 - self.gain) / 4
        if self.awb:
            self.gains = (
                self.gains[0] + (1.9 - self.gains[0]) / 4,
                self.gains[1] + (1.5 - self.gains[1]) / 4,
            )
        return {
            "ExposureTime": self.exposure,
            "AnalogueGain": self.gain,
            "ColourGains": self.gains,
            "SensorTimestamp": 1_000_000 * self.frames,
            "FrameDuration": 33333,
            "Lux": 400.0,
        }

    def _make_array(self, name: str, bgr: np.ndarray) -> np.ndarray:
        stream = self.camera_config[name]
        if stream is None:
            raise RuntimeError(f"Stream {name!r} is not configured")
        w, h = stream["size"]
        img = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        fmt = stream["format"]
        if fmt == "RGB888":
            return img  # B, G, R in memory
        if fmt == "BGR888":
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if fmt == "XRGB8888":
            return cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
        if fmt == "XBGR8888":
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGBA)
        if fmt == "YUV420":
            return cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)
        raise RuntimeError(f"unsupported format {fmt}")

    def _scene(self) -> np.ndarray:
        w, h = self.camera_config["main"]["size"]
        scene, _ = render_field(self.rng, min(w, 1024), min(h, 768), center_class="round")
        return scene

    def capture_metadata(self, wait=None):
        return self._next_request()

    def capture_array(self, name="main", wait=None):
        self._next_request()
        return self._make_array(name, self._scene())

    def capture_arrays(self, names=("main",), wait=None):
        metadata = self._next_request()
        scene = self._scene()
        return [self._make_array(n, scene) for n in names], metadata
