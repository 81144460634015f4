"""The daemon's configuration: a TOML file validated once at start into dataclasses.

Precedence: built-in defaults < config file < command-line flags. Every error names the key
(`source.fps: expected a number, got 'fast'`), so a typo in /etc/edge-run/edge-run.toml is a
one-line fix, not a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from edge.daemon.address import is_loopback
from edge.daemon.mqtt.config import MqttConfig, validate_mqtt
from edge.errors import EdgeError
from edge.preprocess import DEFAULT_MAX_PIXELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The bundles `edge run` uses when none is named: found by name from any directory (edge.bundle.find_bundle).
DEFAULT_BUNDLE = "differential-int8"
DEFAULT_DETECTOR = "wbc-detector-int8"


class ConfigError(EdgeError):
    """The daemon configuration is invalid; the message names the key."""

    exit_code = 2


@dataclass
class Picamera2Options:
    camera: int = 0
    # Full-resolution stream for the archive and the page; the ISP scales `lores` for inference.
    main_size: list[int] = field(default_factory=lambda: [2028, 1520])
    lores_size: list[int] = field(default_factory=lambda: [640, 480])
    # Pi 4 and older can only give YUV420 on lores; Pi 5 also RGB888 (which is BGR in memory).
    lores_format: str = "YUV420"
    settle_s: float = 2.0
    lock_exposure: bool = True
    lock_white_balance: bool = True
    # Fixed values win over the auto-settled ones; 0 / [] means "take what auto settled on".
    exposure_time_us: int = 0
    analogue_gain: float = 0.0
    colour_gains: list[float] = field(default_factory=list)


@dataclass
class OpenCVOptions:
    width: int = 0
    height: int = 0
    fps: float = 0.0
    fourcc: str = ""  # e.g. "MJPG" for USB cameras that only reach full rate compressed


@dataclass
class FolderOptions:
    poll_s: float = 0.5
    # A file is taken once its size and mtime have not changed for this long (the microscope
    # software may still be writing it).
    settle_s: float = 1.0
    recursive: bool = False


@dataclass
class SimOptions:
    width: int = 640
    height: int = 480
    dwell_s: float = 1.0  # how long the "technician" keeps one cell centred
    seed: int = 0
    classes: list[str] = field(default_factory=list)  # empty: the synthetic classes
    # For benchmarks: render this many fields once at open and cycle them (0: a new field per frame),
    # so that `capture` costs what handing over a camera buffer costs, not the renderer.
    prerender: int = 0
    # false: frames as fast as the pipeline takes them (a benchmark feed), never dropped
    paced: bool = True


@dataclass
class SourceConfig:
    uri: str = "sim"
    fps: float = 0.0  # 0: the source's own rate (sim 10, replay as fast as the pipeline takes)
    loop: bool = False
    queue_size: int = 4
    reconnect_max_s: float = 10.0
    # Files (replay, hot folder) larger than this many pixels are refused from their header, before
    # decoding allocates them (edge.preprocess.set_max_pixels): recorded corrupt, never the daemon's end.
    max_pixels: int = DEFAULT_MAX_PIXELS
    picamera2: Picamera2Options = field(default_factory=Picamera2Options)
    opencv: OpenCVOptions = field(default_factory=OpenCVOptions)
    folder: FolderOptions = field(default_factory=FolderOptions)
    sim: SimOptions = field(default_factory=SimOptions)


@dataclass
class FieldOptions:
    """Field mode (docs/field.md): which detector, its threshold, and when a cell counts once."""

    detector: str = ""  # empty: DEFAULT_DETECTOR, wherever the models are (edge.bundle.find_bundle)
    threshold: float = 0.0  # 0: the detector bundle's operating threshold
    track_iou: float = 0.3  # a detection continues a track it overlaps at least this much
    max_age_frames: int = 10  # a track unseen for more frames than this is forgotten...
    max_age_s: float = 2.0  # ...or for more seconds than this, whichever comes first
    min_similarity: float = 0.6  # consecutive views less alike than this: the stage jumped (a new field)
    new_field_shift: float = 0.5  # drift from where a field began, fraction of the view, that makes a new one
    target_cells: int = 100  # the differential the page counts towards

    def detector_path(self) -> Path:
        from edge.bundle import find_bundle

        return Path(self.detector) if self.detector else find_bundle(DEFAULT_DETECTOR)


@dataclass
class PipelineConfig:
    mode: str = "cell"
    region: float = 0.5  # cell mode: centred square, fraction of the frame's shorter side
    region_px: int = 0  # or its side in pixels of the inference image (wins when > 0)
    max_frames: int = 0  # 0: unbounded
    duration_s: float = 0.0  # 0: unbounded
    backend: str = "cpu"
    threads: int = 0  # 0: all cores
    # auto: a capture thread for live sources; file sources try both and keep the faster (pipeline.py)
    layout: str = "auto"
    # LAB round trip of the preprocessing: auto (lookup tables where RAM allows), tables, cvtcolor
    lab: str = "auto"
    field: FieldOptions = field(default_factory=FieldOptions)


@dataclass
class StoreConfig:
    db: str = "edge-run.db"
    session: str = ""  # empty: a new id per start (UTC time)
    synchronous: str = "normal"  # see edge/results/store.py for why; "full" syncs every commit
    fsync_interval_s: float = 1.0  # normal: fsync the WAL at most this often (0: leave it to SQLite)
    # The database may grow to this size (0: as the disk allows); past it, as on a full disk, results
    # are kept in memory and written when there is room again (e.g. after rows are exported and pruned).
    max_db_mb: float = 0.0


@dataclass
class ArchiveConfig:
    dir: str = ""  # empty: next to the database, in flagged/
    enabled: bool = True
    uncertain: bool = True
    alert_classes: list[str] = field(default_factory=lambda: ["myeloblast"])
    min_free_mb: float = 500.0
    jpeg_quality: int = 90


@dataclass
class AlertRule:
    name: str = ""
    classes: list[str] = field(default_factory=list)
    min_fraction: float = 0.2  # of confident, known cells
    min_cells: int = 100  # confident, known cells before the rule may fire: a 100-cell differential


@dataclass
class DifferentialConfig:
    count_uncertain: bool = True
    alerts: list[AlertRule] = field(
        default_factory=lambda: [AlertRule("blast fraction", ["myeloblast"], 0.20, 100)]
    )


@dataclass
class HttpConfig:
    listen: str = "127.0.0.1:8080"  # "off" disables the page
    token: str = ""


@dataclass
class DaemonConfig:
    bundle: str = ""  # empty: DEFAULT_BUNDLE, wherever the models are (edge.bundle.find_bundle)
    # Public keys (base64, from `edge sign --new-key`) of whoever approves bundles here; when any are
    # listed, a bundle without a valid signature by one of them is refused.
    trusted_keys: list[str] = field(default_factory=list)
    source: SourceConfig = field(default_factory=SourceConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    differential: DifferentialConfig = field(default_factory=DifferentialConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)

    @staticmethod
    def session_ok(session: str) -> bool:
        """Empty (a new id per start) or a plain slide id: it names a folder of the archive, so it may
        not climb out of it (`--session ../../x`)."""
        return (
            not session
            or bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", session))
            and ".." not in session
        )

    def bundle_path(self) -> Path:
        from edge.bundle import find_bundle

        return Path(self.bundle) if self.bundle else find_bundle(DEFAULT_BUNDLE)

    @property
    def archive_dir(self) -> Path:
        return (
            Path(self.archive.dir) if self.archive.dir else Path(self.store.db).resolve().parent / "flagged"
        )


def without_secrets(c: DaemonConfig) -> dict:
    """The config as each session records it in the database: secrets say only that they are set."""
    table = dataclasses.asdict(c)
    for section, key in (("mqtt", "password"), ("http", "token")):
        if table[section][key]:
            table[section][key] = "(set)"
    return table


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(value, hint, key: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_describe(value)}")
        return _build(hint, value, key)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        if not math.isfinite(value):  # TOML has nan and inf: no setting here means either
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {hint}")  # a bug here, not a user error


def _build(cls, table: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in table.items()
    }
    return cls(**kwargs)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DaemonConfig:
    """Read `path` (TOML), apply `overrides` (nested dict from the command line), validate."""
    table: dict = {}
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    table = _merge(table, overrides or {})
    config = _build(DaemonConfig, table)
    validate(config)
    return config


def _is_public_key(text: str) -> bool:
    import base64
    import binascii

    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def parse_listen(listen: str) -> tuple[str, int] | None:
    """'HOST:PORT' -> (host, port); 'off' -> None. Raises ConfigError naming http.listen."""
    if listen.lower() in ("off", "none", ""):
        return None
    host, sep, port = listen.rpartition(":")
    _check(
        bool(sep) and port.isdigit() and 0 <= int(port) <= 65535,
        "http.listen",
        f"expected HOST:PORT (e.g. 127.0.0.1:8080) or off, got {listen!r}",
    )
    return host.strip("[]") or "127.0.0.1", int(port)


def validate(c: DaemonConfig) -> None:
    """Range and consistency checks that the types alone cannot express."""
    _check(
        bool(c.session_ok(c.store.session)),
        "store.session",
        f"{c.store.session!r}: a slide id is letters, digits and . _ - (at most 64), not a path",
    )
    for i, key in enumerate(c.trusted_keys):
        _check(
            _is_public_key(key),
            f"trusted_keys[{i}]",
            "expected a base64 Ed25519 public key (from edge sign --new-key)",
        )
    s = c.source
    _check(bool(s.uri), "source.uri", "must not be empty (sim, replay:DIR, folder:DIR, opencv:0, picamera2)")
    _check(s.fps >= 0, "source.fps", f"must be >= 0, got {s.fps}")
    _check(1 <= s.queue_size <= 256, "source.queue_size", f"must be between 1 and 256, got {s.queue_size}")
    _check(s.reconnect_max_s > 0, "source.reconnect_max_s", "must be > 0")
    _check(
        s.max_pixels >= 1,
        "source.max_pixels",
        f"must be a positive number of pixels (width x height), got {s.max_pixels}",
    )
    p2 = s.picamera2
    _check(
        len(p2.main_size) == 2 and min(p2.main_size) > 0,
        "source.picamera2.main_size",
        "expected [width, height]",
    )
    _check(
        len(p2.lores_size) == 2 and min(p2.lores_size) > 0,
        "source.picamera2.lores_size",
        "expected [width, height]",
    )
    _check(
        p2.lores_format in ("YUV420", "RGB888", "BGR888", "XRGB8888", "XBGR8888"),
        "source.picamera2.lores_format",
        f"expected YUV420, RGB888, BGR888, XRGB8888 or XBGR8888, got {p2.lores_format!r}",
    )
    _check(
        p2.colour_gains == [] or len(p2.colour_gains) == 2,
        "source.picamera2.colour_gains",
        "expected [] or [red, blue]",
    )
    _check(p2.settle_s >= 0, "source.picamera2.settle_s", "must be >= 0")
    _check(s.folder.poll_s > 0, "source.folder.poll_s", "must be > 0")
    _check(s.folder.settle_s >= 0, "source.folder.settle_s", f"must be >= 0, got {s.folder.settle_s}")
    _check(s.sim.dwell_s > 0, "source.sim.dwell_s", f"must be > 0, got {s.sim.dwell_s}")
    _check(s.sim.prerender >= 0, "source.sim.prerender", "must be >= 0")
    _check(
        s.sim.width >= 64 and s.sim.height >= 64, "source.sim.width", "sim frames must be at least 64 x 64"
    )
    from edge.synthetic import CLASSES

    for i, name in enumerate(s.sim.classes):
        _check(
            name in CLASSES,
            f"source.sim.classes[{i}]",
            f"unknown synthetic class {name!r} (choose from {', '.join(CLASSES)})",
        )
    p = c.pipeline
    _check(p.mode in ("cell", "field"), "pipeline.mode", f"expected cell or field, got {p.mode!r}")
    fo = p.field
    _check(0 <= fo.threshold <= 1, "pipeline.field.threshold", f"must be in [0, 1], got {fo.threshold}")
    _check(0 < fo.track_iou <= 1, "pipeline.field.track_iou", f"must be in (0, 1], got {fo.track_iou}")
    _check(fo.max_age_frames >= 0, "pipeline.field.max_age_frames", "must be >= 0")
    _check(fo.max_age_s >= 0, "pipeline.field.max_age_s", "must be >= 0")
    _check(-1 <= fo.min_similarity <= 1, "pipeline.field.min_similarity", "must be in [-1, 1]")
    _check(0 < fo.new_field_shift <= 2, "pipeline.field.new_field_shift", "must be in (0, 2]")
    _check(fo.target_cells >= 1, "pipeline.field.target_cells", "must be >= 1")
    _check(0 < p.region <= 1, "pipeline.region", f"must be in (0, 1], got {p.region}")
    _check(p.region_px >= 0, "pipeline.region_px", f"must be >= 0, got {p.region_px}")
    _check(p.max_frames >= 0, "pipeline.max_frames", "must be >= 0")
    _check(p.duration_s >= 0, "pipeline.duration_s", "must be >= 0")
    _check(p.threads >= 0, "pipeline.threads", "must be >= 0")
    _check(
        p.layout in ("auto", "threaded", "inline"),
        "pipeline.layout",
        f"expected auto, threaded or inline, got {p.layout!r}",
    )
    _check(
        p.lab in ("auto", "tables", "cvtcolor"),
        "pipeline.lab",
        f"expected auto, tables or cvtcolor, got {p.lab!r}",
    )
    _check(
        c.store.synchronous in ("full", "normal"),
        "store.synchronous",
        f"expected full or normal, got {c.store.synchronous!r}",
    )
    _check(bool(c.store.db), "store.db", "must name a database file")
    _check(c.store.fsync_interval_s >= 0, "store.fsync_interval_s", "must be >= 0")
    _check(c.store.max_db_mb >= 0, "store.max_db_mb", "must be >= 0")
    a = c.archive
    _check(a.min_free_mb >= 0, "archive.min_free_mb", "must be >= 0")
    _check(1 <= a.jpeg_quality <= 100, "archive.jpeg_quality", "must be between 1 and 100")
    for i, rule in enumerate(c.differential.alerts):
        key = f"differential.alerts[{i}]"
        _check(bool(rule.name), f"{key}.name", "must not be empty")
        _check(bool(rule.classes), f"{key}.classes", "must list at least one class")
        _check(
            0 < rule.min_fraction <= 1, f"{key}.min_fraction", f"must be in (0, 1], got {rule.min_fraction}"
        )
        _check(rule.min_cells >= 1, f"{key}.min_cells", "must be >= 1")
    listen = parse_listen(c.http.listen)
    if listen and not is_loopback(listen[0]):
        _check(
            len(c.http.token) >= 16,
            "http.token",
            f"a non-loopback bind ({listen[0]}) needs a token of at least 16 characters (or set EDGE_RUN_TOKEN)",
        )
    validate_mqtt(c.mqtt, _check)
