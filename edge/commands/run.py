"""`edge run`: the on-device daemon (see docs/daemon.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edge.commands._config_options import config_option, config_overrides
from edge.commands._device_options import max_pixels_option
from edge.commands._options import token_file_option
from edge.daemon.config import load_config
from edge.wording import plural


def _broker(value: str) -> dict:
    """--mqtt HOST[:PORT] -> the [mqtt] keys it sets; off disables what the config file set."""
    if value.lower() == "off":
        return {"host": ""}
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return {"host": host.strip("[]"), "port": int(port)}
    return {"host": value}


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


def store_note(store: dict) -> str:
    """What a full disk cost, in words that match what happened. Frames still waiting in memory when
    the run ends are never written: they are lost as surely as those that overflowed the in-memory
    backlog earlier. (Frames dropped because the queue was full were never classified: the frames
    line counts them.)"""
    waiting, overflowed, full = store["waiting"], store["lost"], store["state"] == "full"
    if not waiting and not overflowed:
        return " (FULL: nothing could be written; no result was waiting)" if full else ""
    parts = [f"{waiting} still waiting for room when the run ended"] if waiting else []
    if overflowed:
        parts.append(f"{overflowed} beyond what memory holds while the disk was full")
    return (
        f" ({'FULL: ' if full else ''}{waiting + overflowed} classified frame(s) never written, "
        f"their results lost: {'; '.join(parts)})"
    )


def _alert_line(a: dict) -> str:
    """One alert rule's figure as the page and the report give it."""
    line = (
        f"  {a['name']}: {a['percent']:.1f} % (95% CI {a['interval_percent'][0]:.1f}-{a['interval_percent'][1]:.1f} %), "
        f"{a['n']} of {a['cells']} {a['base']}"
    )
    if a.get("withheld"):
        return (
            line
            + f"; not given: {a['withheld']} ({a['called']} cells called {'/'.join(a['classes'])}: review them)"
        )
    return line + (f"; waits for {a['min_cells']}" if a["cells"] < a["min_cells"] else "")


def _site_line(site: dict) -> str:
    where = f"site {site['name']}" if site["calibrated"] else "not calibrated"
    decision = {"differs": "DIFFERS from the bundle's cells", "matches": "matches the bundle's cells"}.get(
        site["decision"], site["decision"]
    )
    scale = (
        f", red cells {site['scale_rbc_px']:g} px ({site['scale_source']})" if site["scale_rbc_px"] else ""
    )
    return f"  microscope: {where}; {decision} ({site['cells_checked']} cells checked){scale}"


def _speed_lines(s: dict) -> list[str]:
    """How fast, saying what was measured."""
    if not s["frames_classified"]:
        return ["  speed: no frame was classified in this run"]
    stages = s["stages_ms_p50"]
    if str(s.get("source")).startswith("folder:"):
        # a hot folder: files come at the microscope's pace and wait to settle, so neither a frame
        # rate nor capture-to-result is the device's; what is measured is each file's processing
        p = s["processing_ms"]
        return [
            f"  speed: {plural(s['frames_classified'], 'file')} taken in {s['source_s']:.0f} s (the folder's pace); "
            f"each processed in p50 {p['p50']} ms, p95 {p['p95']} ms after it was read (the wait for a "
            "file to stop changing is not counted)",
            "  stages p50 (ms): "
            + ", ".join(f"{k} {v}" for k, v in stages.items() if k not in ("capture", "latency")),
        ]
    return [
        f"  speed: {s['sustained_fps']} fps sustained; frame-to-result latency p50 {s['latency_ms']['p50']} ms, "
        f"p95 {s['latency_ms']['p95']} ms",
        "  stages p50 (ms): " + ", ".join(f"{k} {v}" for k, v in stages.items()),
    ]


def format_summary(s: dict) -> str:
    before = s.get("before_this_run") or {}
    lines = [f"session {s['session_id']} ended ({s['ended_by']})"]
    if s.get("site"):
        lines.append(_site_line(s["site"]))
        if s["site"]["decision"] == "differs":
            lines.append(f"  {s['site']['banner']}")
    if before.get("frames"):  # a slide continued after a restart: this run's numbers are only part of it
        lines.append(
            f"  continued: {plural(before['frames'], 'frame')} and {plural(before['cells'], 'cell')} were recorded "
            "before this run; "
            "the differential below is the whole slide's"
        )
    lines.append(
        f"  frames this run: {s['frames_classified']} classified of {s['frames_captured']} captured, "
        f"{s['dropped']} dropped (queue full), {s['corrupt']} corrupt, {s['reconnects']} reconnects"
    )
    lines += _speed_lines(s)
    lines += [
        "  differential: " + (", ".join(f"{k} {v}" for k, v in s["differential"].items() if v) or "no cells"),
        # unknown cells are flagged uncertain too: the first count holds the second
        f"  uncertain: {s['uncertain']}"
        + (
            f" ({s['unknown']} of them unknown: unlike the cells the model was trained on)"
            if s["unknown"]
            else ""
        )
        + f"; alerts firing: {', '.join(s['alerts']) or 'none'}",
        *(_alert_line(a) for a in s["alert_rules"]),
        *(
            [
                # found: every tracked cell once; in the differential: the confident ones (the figure's base)
                f"  field: {plural(s['field']['cells_counted'], 'white cell')} found, "
                f"{s['field']['differential_cells']} in the differential (of {s['field']['target_cells']}), "
                f"{s['field']['cells_per_frame']:.2f} per frame, "
                f"{plural(s['field']['fields_seen'], 'field')} seen "
                f"(detector {s['field']['detector']}, threshold {s['field']['threshold']:.3f})"
            ]
            if "field" in s
            else []
        ),
        *([f"  review: {_review_line(s['review'])}"] if s.get("review") else []),
        f"  archive: {s['archive']['state']}, {s['archive']['saved']} flagged images in {s['archive']['dir']}",
        f"  database: {s['database']}{store_note(s['store'])}",
    ]
    m = s.get("mqtt") or {}
    if m.get("enabled"):
        lines.append(
            f"  mqtt: {plural(m['sent_cells'], 'cell')} and {plural(m['sent_events'], 'alert')} acknowledged by {m['broker']}, "
            f"{m['queued']} queued for the next start, {m['reconnects']} reconnects"
            + (f"; last error: {m['last_error']}" if m["last_error"] else "")
        )
    if s.get("page"):
        lines.append(f"  page was: {s['page']}")
    return "\n".join(lines)


def _review_line(r: dict) -> str:
    """'reviewed 3 of 17; verified myeloblast 2, monocyte 1; not signed' (edge/results/verification.py)."""
    verified = ", ".join(f"{k} {v}" for k, v in sorted(r["verified"].items(), key=lambda kv: -kv[1]))
    sign = {"signed": f"signed by {r['sign']['name']}", "changed": "signature voided by new cells"}
    return "; ".join(
        [r["text"], f"verified {verified or 'none yet'}", sign.get(r["sign"]["status"], "not signed")]
    )


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config (see systemd/edge-run.toml). Flags below override it.",
)
# Each flag below sets the config key it names; its type, bounds, choices and help are that key's.
@config_option("bundle", "--bundle", type=click.Path(path_type=Path))
@config_option("source.uri", "--source")
@config_option("source.fps", "--fps")
@config_option("source.loop", "--loop")
@max_pixels_option
@config_option("store.db", "--db", type=click.Path(dir_okay=False, path_type=Path))
@config_option("store.session", "--session")
@config_option("pipeline.mode", "--mode")
@config_option("pipeline.field.detector", "--detector", type=click.Path(path_type=Path))
@config_option("pipeline.region", "--region")
@config_option("pipeline.region_px", "--region-px")
@config_option("pipeline.max_frames", "--max-frames")
@config_option("pipeline.duration_s", "--duration")
@config_option("archive.dir", "--archive", type=click.Path(file_okay=False, path_type=Path))
@config_option("http.listen", "--http")
@config_option("pipeline.backend", "--backend")
@config_option("pipeline.threads", "--threads")
@token_file_option(
    "Read the page's token from this file (or set EDGE_RUN_TOKEN); needed to listen beyond "
    "127.0.0.1. Never printed, never stored."
)
@config_option("pipeline.layout", "--layout")
@config_option("pipeline.lab", "--lab")
@config_option(
    "mqtt.host",
    "--mqtt",
    metavar="HOST[:PORT]",
    to_table=_broker,
    help="Publish results to this MQTT broker (the rest of [mqtt] comes from --config), or off.",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the final summary here as JSON.",
)
def run(config_file, summary_json, token_file, **flags):
    """Classify cells from a camera continuously and keep every result.

    Frames go through a small queue (a live camera drops the oldest frame when inference falls
    behind; counted), are classified, committed one by one to SQLite (WAL), and flagged cells
    (uncertain, or an alert class such as myeloblast) are archived as JPEG + JSON. A page with the
    live frame, the differential count and health is served on 127.0.0.1.

    \b
    Examples:
      edge run                                   # simulated microscope, reference model
      edge run --source picamera2                # a camera: every white cell in view, each counted once
      edge run --source folder:/srv/export --region 1.0   # single-cell images: cell mode
      edge run --source replay:frames/ --fps 20 --db results.db --max-frames 150
      edge run --config /etc/edge-run/edge-run.toml   # what the systemd unit runs

    SIGTERM or Ctrl-C: finishes the frames in flight, flushes and exits 0.
    """
    from edge.daemon.app import Daemon  # the daemon's imports only when it runs, not for --help

    overrides = config_overrides(click.get_current_context().command, flags)
    token = _read_token(token_file) if token_file else os.environ.get("EDGE_RUN_TOKEN", "")
    if token:  # never echoed, never stored (sessions.config holds "(set)")
        overrides.setdefault("http", {})["token"] = token
    config = load_config(config_file, overrides)
    summary = Daemon(config, out=lambda line: click.echo(line)).run()
    click.echo(format_summary(summary))
    if summary_json:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0
