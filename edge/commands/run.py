"""`edge run`: the on-device daemon (see docs/daemon.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edge.commands._device_options import max_pixels_option
from edge.runtime import BACKENDS


def _overrides(**flags) -> dict:
    """Command-line flags that were given -> the nested config table they override."""
    where = {
        "bundle": ("bundle",),
        "source": ("source", "uri"),
        "fps": ("source", "fps"),
        "loop": ("source", "loop"),
        "max_pixels": ("source", "max_pixels"),
        "db": ("store", "db"),
        "session": ("store", "session"),
        "max_frames": ("pipeline", "max_frames"),
        "duration": ("pipeline", "duration_s"),
        "mode": ("pipeline", "mode"),
        "region": ("pipeline", "region"),
        "region_px": ("pipeline", "region_px"),
        "detector": ("pipeline", "field", "detector"),
        "backend": ("pipeline", "backend"),
        "threads": ("pipeline", "threads"),
        "layout": ("pipeline", "layout"),
        "lab": ("pipeline", "lab"),
        "archive": ("archive", "dir"),
        "http": ("http", "listen"),
        "mqtt": ("mqtt", "host"),
    }
    table: dict = {}
    for name, value in flags.items():
        if value is None or (name == "loop" and not value):
            continue
        *parents, key = where[name]
        node = table
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = str(value) if name in ("bundle", "db", "archive", "detector") else value
    mqtt = table.get("mqtt", {})
    if mqtt.get("host"):  # HOST[:PORT]; off disables what the config file set
        host, sep, port = mqtt["host"].rpartition(":")
        if mqtt["host"].lower() == "off":
            mqtt["host"] = ""
        elif sep and port.isdigit() and not host.endswith(":"):
            mqtt["host"], mqtt["port"] = host.strip("[]"), int(port)
    return table


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise click.BadParameter(
            f"{path}: cannot read ({exc.strerror or exc})", param_hint="--token-file"
        ) from None
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="--token-file")
    return token


def format_summary(s: dict) -> str:
    before = s.get("before_this_run") or {}
    lines = [f"session {s['session_id']} ended ({s['ended_by']})"]
    if before.get("frames"):  # a slide continued after a restart: this run's numbers are only part of it
        lines.append(
            f"  continued: {before['frames']} frames and {before['cells']} cells were recorded before this run; "
            "the differential below is the whole slide's"
        )
    lines.append(
        f"  frames this run: {s['frames_classified']} classified of {s['frames_captured']} captured, "
        f"{s['dropped']} dropped (queue full), {s['corrupt']} corrupt, {s['reconnects']} reconnects"
    )
    if s["frames_classified"]:
        lines += [
            f"  speed: {s['sustained_fps']} fps sustained; frame-to-result latency p50 {s['latency_ms']['p50']} ms, "
            f"p95 {s['latency_ms']['p95']} ms",
            "  stages p50 (ms): " + ", ".join(f"{k} {v}" for k, v in s["stages_ms_p50"].items()),
        ]
    else:
        lines.append("  speed: no frame was classified in this run")
    lines += [
        "  differential: " + (", ".join(f"{k} {v}" for k, v in s["differential"].items() if v) or "no cells"),
        f"  uncertain: {s['uncertain']}, unknown: {s['unknown']}; alerts firing: {', '.join(s['alerts']) or 'none'}",
        *(
            f"  {a['name']}: {a['fraction']:.1%} (95% CI {a['interval'][0]:.1%}-{a['interval'][1]:.1%}) of "
            f"{a['cells']} confident known cells"
            + (f"; waits for {a['min_cells']}" if a["cells"] < a["min_cells"] else "")
            for a in s["alert_rules"]
        ),
        *(
            [
                f"  field: {s['field']['differential_cells']} white cells counted (differential of {s['field']['target_cells']}), "
                f"{s['field']['cells_per_frame']:.2f} per frame, {s['field']['fields_seen']} fields seen "
                f"(detector {s['field']['detector']}, threshold {s['field']['threshold']:.3f})"
            ]
            if "field" in s
            else []
        ),
        f"  archive: {s['archive']['state']}, {s['archive']['saved']} flagged images in {s['archive']['dir']}",
        f"  database: {s['database']}"
        + (
            f" (FULL: {s['store']['waiting']} frame(s) not written, {s['store']['lost']} lost)"
            if s["store"]["state"] == "full"
            else ""
        ),
    ]
    m = s.get("mqtt") or {}
    if m.get("enabled"):
        lines.append(
            f"  mqtt: {m['sent_cells']} cells and {m['sent_events']} alerts acknowledged by {m['broker']}, "
            f"{m['queued']} queued for the next start, {m['reconnects']} reconnects"
            + (f"; last error: {m['last_error']}" if m["last_error"] else "")
        )
    if s.get("page"):
        lines.append(f"  page was: {s['page']}")
    return "\n".join(lines)


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config (see systemd/edge-run.toml). Flags below override it.",
)
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    help="Model bundle directory [default: models/differential-int8, the 9-class differential].",
)
@click.option(
    "--source",
    help="sim | replay:DIR|VIDEO | folder:DIR | opencv:INDEX|PATH|gst:PIPELINE | picamera2[:N]  [default: sim].",
)
@click.option("--fps", type=float, help="Frame rate for sim and replay (and requested from cameras).")
@click.option("--loop", is_flag=True, default=None, help="Replay: start again at the end.")
@max_pixels_option
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite results database [default: edge-run.db].",
)
@click.option(
    "--session", help="Session / slide id; reuse one to continue its differential count [default: UTC time]."
)
@click.option(
    "--mode",
    type=click.Choice(["cell", "field"]),
    help="cell: classify the centred region of each frame [default]. field: find every white cell, "
    "classify each, count each once while it stays in view (docs/field.md).",
)
@click.option(
    "--detector",
    type=click.Path(path_type=Path),
    help="Field mode: the detector bundle [default: models/wbc-detector-int8].",
)
@click.option(
    "--region",
    type=float,
    help="Cell mode: side of the centred square, as a fraction of the shorter side [0.5].",
)
@click.option(
    "--region-px",
    type=click.IntRange(min=0),
    help="Cell mode: side of the centred square in pixels (wins over --region); the model's input size skips a resize.",
)
@click.option("--max-frames", type=click.IntRange(min=0), help="Exit 0 after this many classified frames.")
@click.option("--duration", type=click.FloatRange(min=0), help="Exit 0 after this many seconds.")
@click.option(
    "--archive",
    type=click.Path(file_okay=False, path_type=Path),
    help="Flagged-image archive directory [default: flagged/ next to the database].",
)
@click.option(
    "--http",
    help="Page and API address HOST:PORT, or off [default: 127.0.0.1:8080]; port 0 picks a free one.",
)
@click.option("--backend", type=click.Choice(list(BACKENDS)), help="Inference backend [default: cpu].")
@click.option("--threads", type=click.IntRange(min=0), help="CPU inference threads (0: all cores).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the page's token from this file (or set EDGE_RUN_TOKEN); needed to listen beyond "
    "127.0.0.1. Never printed, never stored.",
)
@click.option(
    "--layout",
    type=click.Choice(["auto", "threaded", "inline"]),
    help="Capture thread beside inference (threaded), or both in one thread (inline) [default: auto: "
    "threaded for cameras; a file source tries both and keeps the faster].",
)
@click.option(
    "--lab",
    type=click.Choice(["auto", "tables", "cvtcolor"]),
    help="CLAHE's LAB round trip: lookup tables built at start (~90 MB) or OpenCV's conversions; the same "
    "bytes [default: auto: tables where RAM allows].",
)
@click.option(
    "--mqtt",
    metavar="HOST[:PORT]",
    help="Publish results to this MQTT broker (the rest of [mqtt] comes from --config), or off.",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the final summary here as JSON.",
)
def run(config_file, summary_json, **flags):
    """Classify cells from a camera continuously and keep every result.

    Frames go through a small queue (a live camera drops the oldest frame when inference falls
    behind; counted), are classified, committed one by one to SQLite (WAL), and flagged cells
    (uncertain, or an alert class such as myeloblast) are archived as JPEG + JSON. A page with the
    live frame, the differential count and health is served on 127.0.0.1.

    \b
    Examples:
      edge run                                   # simulated microscope, reference model
      edge run --mode field --source picamera2   # every white cell in each field, each counted once
      edge run --source replay:frames/ --fps 20 --db results.db --max-frames 150
      edge run --config /etc/edge-run/edge-run.toml   # what the systemd unit runs

    SIGTERM or Ctrl-C: finishes the frames in flight, flushes and exits 0.
    """
    from edge.daemon.app import Daemon
    from edge.daemon.config import load_config

    token_file = flags.pop("token_file")
    overrides = _overrides(**flags)
    token = _read_token(token_file) if token_file else os.environ.get("EDGE_RUN_TOKEN", "")
    if token:  # never echoed, never stored (sessions.config holds "(set)")
        overrides.setdefault("http", {})["token"] = token
    config = load_config(config_file, overrides)
    summary = Daemon(config, out=lambda line: click.echo(line)).run()
    click.echo(format_summary(summary))
    if summary_json:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0
