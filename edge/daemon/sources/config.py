"""The [source] table of the daemon's config, with one option table per source (beside the sources
that read them). Bounds keep a typo from becoming a crash: a camera frame of 100000 x 100000 pixels,
a queue of a million frames, a rate of a billion frames a second."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from edge.daemon.section import Hint, Section, invalid
from edge.preprocess import DEFAULT_MAX_PIXELS
from edge.synthetic import CLASSES

# A gigapixel decodes to 3 GB, more memory than most boards running this have: a larger limit is a typo.
MAX_PIXELS = 1_000_000_000
MAX_FPS = 1000.0  # frames a second; no microscope camera comes near
MAX_SIDE = 16384  # pixels, the widest frame asked of a camera or the simulator
MAX_WAIT_S = 3600.0  # settling, polling and back-off times: an hour is already a mistake
MAX_PRERENDER_BYTES = 1 << 30  # the simulator's pre-rendered pool (a benchmark feed) stays under 1 GiB

Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
Size = Annotated[list[Side], Field(min_length=2, max_length=2), Hint("expected [width, height]")]


class Picamera2Options(Section):
    camera: int = Field(0, ge=0, le=15)
    # Full-resolution stream for the archive and the page; the ISP scales `lores` for inference.
    main_size: Size = Field(default_factory=lambda: [2028, 1520])
    lores_size: Size = Field(default_factory=lambda: [640, 480])
    # Pi 4 and older can only give YUV420 on lores; Pi 5 also RGB888 (which is BGR in memory).
    lores_format: Literal["YUV420", "RGB888", "BGR888", "XRGB8888", "XBGR8888"] = "YUV420"
    settle_s: float = Field(2.0, ge=0, le=60)
    lock_exposure: bool = True
    lock_white_balance: bool = True
    # Fixed values win over the auto-settled ones; 0 / [] means "take what auto settled on".
    exposure_time_us: int = Field(0, ge=0, le=1_000_000_000)  # 1000 s: past any sensor's longest exposure
    analogue_gain: float = Field(0.0, ge=0, le=64)
    colour_gains: list[Annotated[float, Field(ge=0, le=32)]] = Field(
        default_factory=list
    )  # libcamera's range

    @field_validator("colour_gains")
    @classmethod
    def _red_and_blue(cls, gains: list[float]) -> list[float]:
        if len(gains) not in (0, 2):
            raise invalid(f"expected [] or [red, blue], got {gains!r}")
        return gains


class OpenCVOptions(Section):
    width: int = Field(0, ge=0, le=MAX_SIDE)
    height: int = Field(0, ge=0, le=MAX_SIDE)
    fps: float = Field(0.0, ge=0, le=MAX_FPS)
    # e.g. "MJPG" for USB cameras that only reach full rate compressed
    fourcc: Annotated[
        str, Field(pattern=r"^(.{4})?$"), Hint("expected four characters such as MJPG, or empty")
    ] = ""


class FolderOptions(Section):
    poll_s: float = Field(0.5, gt=0, le=MAX_WAIT_S)
    # A file is taken once its size and mtime have not changed for this long (the microscope
    # software may still be writing it).
    settle_s: float = Field(1.0, ge=0, le=MAX_WAIT_S)
    recursive: bool = False


def _synthetic_class(name: str) -> str:
    if name not in CLASSES:
        raise invalid(f"unknown synthetic class {name!r} (choose from {', '.join(CLASSES)})")
    return name


class SimOptions(Section):
    width: int = Field(640, ge=64, le=8192)
    height: int = Field(480, ge=64, le=8192)
    dwell_s: float = Field(1.0, gt=0, le=MAX_WAIT_S)  # how long the "technician" keeps one cell centred
    seed: int = Field(0, ge=0)
    # empty: the synthetic classes
    classes: list[Annotated[str, AfterValidator(_synthetic_class)]] = Field(default_factory=list)
    # For benchmarks: render this many fields once at open and cycle them (0: a new field per frame),
    # so that `capture` costs what handing over a camera buffer costs, not the renderer.
    prerender: int = Field(0, ge=0, le=256)
    # false: frames as fast as the pipeline takes them (a benchmark feed), never dropped
    paced: bool = True

    @model_validator(mode="after")
    def _pool_fits(self) -> SimOptions:
        size = self.prerender * self.width * self.height * 3
        if size > MAX_PRERENDER_BYTES:
            raise invalid(
                f"{self.prerender} fields of {self.width} x {self.height} take {size / 1e9:.1f} GB; "
                f"at most {MAX_PRERENDER_BYTES / 1e9:.1f} GB",
                "prerender",
            )
        return self


class SourceConfig(Section):
    uri: Annotated[
        str, Field(min_length=1), Hint("must not be empty (sim, replay:DIR, folder:DIR, opencv:0, picamera2)")
    ] = Field(
        "sim",
        description="sim | replay:DIR|VIDEO | folder:DIR | opencv:INDEX|PATH|gst:PIPELINE | picamera2[:N]",
    )
    fps: float = Field(
        0.0,  # 0: the source's own rate (sim 10, replay as fast as the pipeline takes)
        ge=0,
        le=MAX_FPS,
        description="Frame rate for sim and replay (and requested from cameras).",
    )
    loop: bool = Field(False, description="Replay: start again at the end.")
    queue_size: int = Field(4, ge=1, le=256)
    reconnect_max_s: float = Field(10.0, gt=0, le=MAX_WAIT_S)
    # Files (replay, hot folder) larger than this many pixels are refused from their header, before
    # decoding allocates them (edge.preprocess.set_max_pixels): recorded corrupt, never the daemon's end.
    max_pixels: Annotated[
        int,
        Field(ge=1, le=MAX_PIXELS),
        Hint(f"must be a positive number of pixels (width x height), at most {MAX_PIXELS:,}"),
    ] = Field(
        DEFAULT_MAX_PIXELS,
        description="Refuse an image of more than N pixels (width x height), or one that would take "
        "more than 6 x N bytes to decode (16-bit, alpha, float), from its header before decoding it: "
        "one error line naming the file and the limit.",
    )
    picamera2: Picamera2Options = Field(default_factory=Picamera2Options)
    opencv: OpenCVOptions = Field(default_factory=OpenCVOptions)
    folder: FolderOptions = Field(default_factory=FolderOptions)
    sim: SimOptions = Field(default_factory=SimOptions)
