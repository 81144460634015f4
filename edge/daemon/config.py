"""The daemon's configuration: a TOML file validated once at start (`model_validate`) into pydantic
models, one per table, each field with its bounds. [source] and its per-source tables sit beside the
sources (edge/daemon/sources/config.py), [mqtt] beside the publisher (edge/daemon/mqtt/config.py).

Precedence: built-in defaults < config file < command-line flags. The flags of `edge run` and
`edge bench` take their types, bounds, choices and help from the fields declared here
(edge/commands/_config_options.py). Every error is one line naming the key (`source.fps: expected a
number, got str 'fast'`), so a typo in /etc/edge-run/edge-run.toml is a one-line fix, not a traceback.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from edge.bundle import find_bundle
from edge.daemon.address import is_loopback
from edge.daemon.mqtt.config import MqttConfig
from edge.daemon.section import ConfigError, Hint, Section, error_line, invalid
from edge.daemon.sources.config import (  # noqa: F401 - re-exported: the sections' one import
    MAX_SIDE,
    FolderOptions,
    OpenCVOptions,
    Picamera2Options,
    SimOptions,
    SourceConfig,
)
from edge.labtables import STRATEGIES
from edge.runtime import BACKENDS, MAX_THREADS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The bundles `edge run` uses when none is named: found by name from any directory (edge.bundle.find_bundle).
DEFAULT_BUNDLE = "differential-int8"
DEFAULT_DETECTOR = "wbc-detector-int8"

LAYOUTS = ("auto", "threaded", "inline")  # edge/daemon/pipeline.py runs them
# A database capped below this holds little more than its schema and a session (about 50 KB: a 4 KB
# page per table and index), so results would wait in memory for room that never comes, while the
# summary said nothing was lost. 1 MB holds the schema and thousands of cells.
MIN_DB_MB = 1.0
MAX_CELLS = 1_000_000  # a differential counts hundreds of cells; a million is a typo


class FieldOptions(Section):
    """Field mode (docs/field.md): which detector, its threshold, and when a cell counts once."""

    detector: str = Field(  # empty: DEFAULT_DETECTOR, wherever the models are (edge.bundle.find_bundle)
        "", description="Field mode: the detector bundle [default: models/wbc-detector-int8]."
    )
    threshold: float = Field(0.0, ge=0, le=1)  # 0: the detector bundle's operating threshold
    track_iou: float = Field(0.3, gt=0, le=1)  # a detection continues a track it overlaps at least this much
    # a track unseen for more frames than this is forgotten...
    max_age_frames: int = Field(10, ge=0, le=100_000)
    max_age_s: float = Field(2.0, ge=0, le=3600)  # ...or for more seconds than this, whichever comes first
    # consecutive views less alike than this: the stage jumped (a new field)
    min_similarity: float = Field(0.6, ge=-1, le=1)
    # drift from where a field began, fraction of the view, that makes a new one
    new_field_shift: float = Field(0.5, gt=0, le=2)
    target_cells: int = Field(100, ge=1, le=MAX_CELLS)  # the differential the page counts towards

    def detector_path(self) -> Path:
        return Path(self.detector) if self.detector else find_bundle(DEFAULT_DETECTOR)


# What a source shows, and so which mode counts it (pipeline.mode "auto"): a camera on a microscope
# sees a field, several white cells among red ones, so field mode; image files (a replay, a hot
# folder) are the single-cell images a microscope's software or a dataset saves, so cell mode.
CAMERA_SOURCES = ("picamera2", "opencv", "sim")


def choose_mode(mode: str, source_uri: str) -> str:
    """`mode` ("cell" or "field"), or for "auto" the one for the source `source_uri` names."""
    if mode != "auto":
        return mode
    return "field" if source_uri.partition(":")[0] in CAMERA_SOURCES else "cell"


class CellOptions(Section):
    """Cell mode: when the centred cell is another one, to count again."""

    # Consecutive views at least this alike (edge/motion.py, after undoing the shift) show the same
    # cell. A view held still scores 0.99 and more with camera noise, a moving stage 0.95-0.99 (BCCD
    # fields moved 4-30 px a frame, motion blur and noise); two different single-cell images 0.46 at
    # most (pbc-8class, blood-5class), the synthetic cells of edge.synthetic up to 0.89.
    min_similarity: float = Field(0.92, ge=-1, le=1)


class PipelineConfig(Section):
    mode: Literal["auto", "cell", "field"] = Field(
        "auto",
        description="cell: classify the centred region of each frame, once per cell. field: find every "
        "white cell, classify each, count each once while it stays in view (docs/field.md). auto: field "
        "for a camera (picamera2, opencv, sim), cell for image files (replay, folder).",
    )
    region: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Cell mode: side of the centred square, as a fraction of the frame's shorter side.",
    )
    region_px: int = Field(
        0,
        ge=0,
        le=MAX_SIDE,
        description="Cell mode: side of the centred square in pixels of the inference image (wins over "
        "--region when > 0); the model's input size skips a resize.",
    )
    max_frames: int = Field(0, ge=0, description="Exit 0 after this many classified frames.")  # 0: unbounded
    duration_s: float = Field(0.0, ge=0, description="Exit 0 after this many seconds.")  # 0: unbounded
    backend: Literal[tuple(BACKENDS)] = Field("cpu", description="Inference backend.")
    threads: int = Field(
        0,
        ge=0,
        le=MAX_THREADS,
        description="CPU inference threads of each model (0: all cores in cell mode; half of them each "
        "in field mode, whose detector and classifier run side by side).",
    )
    # auto: a capture thread for live sources; file sources try both and keep the faster (pipeline.py)
    layout: Literal[LAYOUTS] = Field(
        "auto",
        description="Capture thread beside inference (threaded), or both in one thread (inline); auto: "
        "threaded for cameras, a file source tries both and keeps the faster.",
    )
    # LAB round trip of the preprocessing: auto (lookup tables where RAM allows), tables, cvtcolor
    lab: Literal[STRATEGIES] = Field(
        "auto",
        description="CLAHE's LAB round trip: lookup tables built at start (~90 MB) or OpenCV's "
        "conversions (cvtcolor); the same bytes. auto: the tables where RAM allows.",
    )
    cell: CellOptions = Field(default_factory=CellOptions)
    field: FieldOptions = Field(default_factory=FieldOptions)


def session_ok(session: str) -> bool:
    """Empty (a new id per start) or a plain slide id: it names a folder of the archive, so it may
    not climb out of it (`--session ../../x`)."""
    return (
        not session or bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", session)) and ".." not in session
    )


class StoreConfig(Section):
    db: Annotated[str, Field(min_length=1), Hint("must name a database file")] = Field(
        "edge-run.db", description="SQLite results database."
    )
    session: str = Field(  # empty: a new id per start (UTC time)
        "",
        description="Session / slide id; reuse one to continue its differential count [default: UTC time].",
    )
    # see edge/results/store.py for why; "full" syncs every commit
    synchronous: Literal["full", "normal"] = "normal"
    # normal: fsync the WAL at most this often (0: leave it to SQLite)
    fsync_interval_s: float = Field(1.0, ge=0, le=3600)
    # The database may grow to this size (0: as the disk allows); past it, as on a full disk, results
    # are kept in memory and written when there is room again (e.g. after rows are exported and pruned).
    max_db_mb: float = Field(0.0, ge=0)

    @field_validator("session")
    @classmethod
    def _plain_id(cls, session: str) -> str:
        if not session_ok(session):
            raise invalid(f"{session!r}: a slide id is letters, digits and . _ - (at most 64), not a path")
        return session

    @field_validator("max_db_mb")
    @classmethod
    def _room_for_a_session(cls, mb: float) -> float:
        if 0 < mb < MIN_DB_MB:
            raise invalid(
                f"must be 0 (no limit) or at least {MIN_DB_MB:g} MB, the room a session needs, got {mb}"
            )
        return mb


class ArchiveConfig(Section):
    dir: str = Field(
        "", description="Flagged-image archive directory [default: flagged/ next to the database]."
    )
    enabled: bool = True
    uncertain: bool = True
    alert_classes: list[str] = Field(default_factory=lambda: ["myeloblast"])
    min_free_mb: float = Field(500.0, ge=0)
    jpeg_quality: int = Field(90, ge=1, le=100)


class AlertRule(Section):
    name: Annotated[str, Field(min_length=1), Hint("must not be empty")] = ""
    classes: Annotated[list[str], Field(min_length=1), Hint("must list at least one class")] = Field(
        default_factory=list
    )
    # of the white cells counted (edge/daemon/differential.py): the confident ones by default
    min_fraction: float = Field(0.2, gt=0, le=1)
    # white cells counted before the rule may fire: a 100-cell differential
    min_cells: int = Field(100, ge=1, le=MAX_CELLS)


class DifferentialConfig(Section):
    # An uncertain cell waits for a technician and counts in no figure; true: it counts at its top
    # label in every figure, the alerts' included (edge/daemon/differential.py)
    count_uncertain: bool = False
    alerts: list[AlertRule] = Field(
        default_factory=lambda: [
            AlertRule(name="blast fraction", classes=["myeloblast"], min_fraction=0.20, min_cells=100)
        ]
    )


def _listen_address(listen: str) -> tuple[str, int] | None:
    if listen.lower() in ("off", "none", ""):
        return None
    host, sep, port = listen.rpartition(":")
    if not (sep and port.isdigit() and 0 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8080) or off, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_listen(listen: str) -> tuple[str, int] | None:
    """'HOST:PORT' -> (host, port); 'off' -> None. Raises ConfigError naming http.listen."""
    try:
        return _listen_address(listen)
    except ValueError as exc:
        raise ConfigError(f"http.listen: {exc}") from None


class HttpConfig(Section):
    listen: str = Field(  # "off" disables the page
        "127.0.0.1:8080", description="Page and API address HOST:PORT, or off; port 0 picks a free one."
    )
    token: str = ""

    @field_validator("listen")
    @classmethod
    def _address(cls, listen: str) -> str:
        try:
            _listen_address(listen)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        return listen

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> HttpConfig:
        address = _listen_address(self.listen)
        if address and not is_loopback(address[0]):
            weakness = token_weakness(self.token)
            if weakness:
                raise invalid(
                    f"a non-loopback bind ({address[0]}) needs a token of at least {TOKEN_MIN_LENGTH} "
                    f"characters, {TOKEN_MIN_DISTINCT} of them different, without blanks ({weakness}; "
                    "or set EDGE_RUN_TOKEN)",
                    "token",
                )
        return self


TOKEN_MIN_LENGTH = 16
TOKEN_MIN_DISTINCT = 6  # "x" * 16 or a row of spaces is not a secret; 16 random hex digits have ~10


def token_weakness(token: str) -> str:
    """Why `token` cannot guard a page on the network, or "" when it can. It travels in a header and
    a URL, so blanks and control characters are refused too."""
    if not token:
        return "none is set"
    if any(c.isspace() or not c.isprintable() for c in token):
        return "this one has blank or control characters"
    if len(token) < TOKEN_MIN_LENGTH:
        return f"this one has {len(token)}"
    if len(set(token)) < TOKEN_MIN_DISTINCT:
        return f"this one has {len(set(token))} different characters"
    return ""


def _public_key(text: str) -> str:
    try:
        ok = len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise invalid("expected a base64 Ed25519 public key (from edge sign --new-key)")
    return text


class DaemonConfig(Section):
    bundle: str = Field(  # empty: DEFAULT_BUNDLE, wherever the models are (edge.bundle.find_bundle)
        "",
        description="Model bundle directory [default: models/differential-int8, the 9-class differential].",
    )
    # Public keys (base64, from `edge sign --new-key`) of whoever approves bundles here; when any are
    # listed, a bundle without a valid signature by one of them is refused.
    trusted_keys: list[Annotated[str, AfterValidator(_public_key)]] = Field(default_factory=list)
    source: SourceConfig = Field(default_factory=SourceConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    differential: DifferentialConfig = Field(default_factory=DifferentialConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)

    session_ok = staticmethod(session_ok)

    def bundle_path(self) -> Path:
        return Path(self.bundle) if self.bundle else find_bundle(DEFAULT_BUNDLE)

    @property
    def mode(self) -> str:
        """The mode this run counts in: pipeline.mode, "auto" chosen by the source (choose_mode)."""
        return choose_mode(self.pipeline.mode, self.source.uri)

    @property
    def archive_dir(self) -> Path:
        return (
            Path(self.archive.dir) if self.archive.dir else Path(self.store.db).resolve().parent / "flagged"
        )


def without_secrets(c: DaemonConfig) -> dict:
    """The config as each session records it in the database: secrets say only that they are set."""
    table = c.model_dump()
    for section, key in (("mqtt", "password"), ("http", "token")):
        if table[section][key]:
            table[section][key] = "(set)"
    return table


def _merge(base: dict, extra: dict) -> dict:
    """`extra` (the flags) over `base` (the file). A file's scalar where a table belongs stays, so that
    validation names it: a flag setting a key inside it must not hide the mistake."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and key in out:
            out[key] = _merge(out[key], value) if isinstance(out[key], dict) else out[key]
        else:
            out[key] = value
    return out


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DaemonConfig:
    """Read `path` (TOML), apply `overrides` (nested dict from the command line), validate once."""
    table = _merge(read_toml(path) if path is not None else {}, overrides or {})
    try:
        return DaemonConfig.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(error_line(exc, DaemonConfig)) from None
