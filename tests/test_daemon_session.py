"""The daemon's assembly (edge/daemon/session.py) and its one Status (edge/daemon/status.py), in
process: the real tiny bundle, the simulated microscope, real SQLite."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from edge.commands.run import format_summary
from edge.daemon.config import ConfigError, load_config
from edge.daemon.metrics import StatusCollector
from edge.daemon.mqtt.messages import status_payload
from edge.daemon.session import build_session
from edge.daemon.status import RunReport, page_json, summary_json


def sim_config(bundle, tmp_path, **sections):
    overrides = {
        "bundle": str(bundle),
        # cell mode (a camera's default is field mode), and a new cell in every frame: each is counted
        "source": {"uri": "sim", "sim": {"paced": False, "prerender": 0, "dwell_s": 0.1}},
        "pipeline": {"mode": "cell"},
        "store": {"db": str(tmp_path / "r.db"), "session": "S1"},
        "http": {"listen": "off"},
        **sections,
    }
    return load_config(overrides=overrides)


def test_a_session_that_fails_half_way_closes_what_it_had_opened(tiny_bundle, tmp_path):
    # The archive comes after the database: a file where its folder should be fails the start, and
    # the database opened before it is closed again (SQLite removes the WAL with the last connection).
    (tmp_path / "flagged").write_text("not a folder")
    config = sim_config(tiny_bundle, tmp_path, archive={"dir": str(tmp_path / "flagged")})
    with pytest.raises(ConfigError, match="archive.dir: cannot use") as failed:
        build_session(config)
    assert failed.value.__traceback__ is not None  # the frames that held the store are still alive
    assert (tmp_path / "r.db").exists() and not (tmp_path / "r.db-wal").exists()


def test_the_page_the_summary_mqtt_and_metrics_render_one_status(tiny_bundle, tmp_path):
    session = build_session(sim_config(tiny_bundle, tmp_path))
    try:
        session.source.open()
        for frame_id in range(6):
            frame = session.source.read()
            frame.frame_id = frame_id
            session.sinks.on_frame(session.processor.process(frame))
        status = session.status()
    finally:
        session.close()
    page = json.loads(json.dumps(page_json(status)))  # as the page receives it
    report = RunReport("max_frames", session.before, session.telemetry.run_totals(), None, "inline", {}, "x")
    summary = summary_json(status, report)
    mqtt = status_payload("scope-1", status)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status))
    metrics = {
        s.name: s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
        if not s.labels
    }
    assert page["frames"]["processed"] == summary["frames_classified"] == mqtt["frames"]["processed"] == 6
    assert metrics["edge_frames_processed_total"] == 6
    counted = {row["label"]: row["count"] for row in page["differential"]["counts"]}
    assert counted == summary["differential"] and page["differential"]["unknown"] == 0  # no rejection
    # an unsure cell waits for review: counted in no figure (edge/daemon/differential.py)
    assert sum(counted.values()) + page["differential"]["uncertain"] == 6
    # the microscope: one state on every screen (a bundle without a gate is not checked)
    assert page["site"] == summary["site"] == mqtt["site"]
    assert page["site"]["calibrated"] is False and page["site"]["decision"] == "unavailable"
    assert page["session_id"] == summary["session_id"] == mqtt["session_id"] == "S1"
    assert page["mode"] == {"name": "cell", "region": 0.5, "region_px": 0} and "field" not in page
    assert page["store"] == summary["store"] == {"state": "ok", "waiting": 0, "lost": 0, "last_error": ""}
    assert mqtt["uncertain_rate"] == page["uncertain_rate"] == metrics["edge_uncertain_ratio"]
    assert page["review"]["session_id"] == "S1" and summary["mqtt"] == page["mqtt"] == {"enabled": False}
    # "verified" and "reviewed N of M": one definition (edge/results/verification.py) on the page, in
    # the summary and in MQTT's status; before any review nothing is verified
    review = page["review"]
    assert review["verified"] == {} and review["reviewed"] == 0 and review["queued"] >= 0
    assert summary["review"]["verified"] == mqtt["review"]["verified"] == review["verified"]
    assert (mqtt["review"]["reviewed"], mqtt["review"]["queued"]) == (review["reviewed"], review["queued"])
    assert f"review: reviewed 0 of {review['queued']}; verified none yet; not signed" in format_summary(
        summary
    )
