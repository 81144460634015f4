"""One number per figure (issue 23) and the calibrated microscope on every screen (issue 22): one real
slide, `edge run` with its page, MQTT to a real mosquitto and its summary, then `edge report` (HTML,
PDF read back by pdftotext, FHIR) from results.db. The blast fraction, and the differential row it
is, is one value everywhere, with the same words; the site's name, calibration time and held-back
accuracy are on every screen."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle as FhirBundle

from edge.bundle import Bundle
from edge.synthetic import make_dataset
from tests.daemon_cli import edge_cli
from tests.mqtt_broker import Broker, Collector, needs_mosquitto
from tests.site_bundles import REJECT_BUNDLE, TINY_CONFIG, cells, write_cells
from tests.test_daemon_acceptance import Daemon, wait_rows
from tests.test_lab_report import needs
from tests.test_mqtt import wait_for, write_config

pytestmark = needs_mosquitto
CELLS = 80


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """tests/fixtures/tiny-reject-int8 calibrated by `edge adapt` to a site called scope3 (it sets the
    site section and the gate)."""
    root = tmp_path_factory.mktemp("calibrated")
    site = make_dataset(root / "scope3", per_class=12, seed=7)
    adapted = edge_cli("adapt", REJECT_BUNDLE, site, "--out", root / "scope3-int8")
    assert adapted.returncode == 0, adapted.stderr
    return root / "scope3-int8"


def test_one_slide_gives_one_blast_fraction_everywhere(calibrated, tmp_path):
    needs("pdftotext")
    broker = Broker(tmp_path / "broker").start()
    lab = Collector(broker.port, "lab/#")
    inbox = write_cells(tmp_path / "inbox", cells(CELLS, seed=8))
    config = write_config(tmp_path / "edge-run.toml", broker.port, extra=TINY_CONFIG)
    db = tmp_path / "results.db"
    d = Daemon(
        ["--config", config, "--bundle", calibrated, "--source", f"folder:{inbox}", "--db", db,
         "--session", "SLIDE-9", "--region", "1.0", "--http", "127.0.0.1:0", "--summary-json", "s.json"],
        cwd=tmp_path,
    )  # fmt: skip
    try:
        d.wait_url()
        wait_rows(db, CELLS)
        page = json.loads(d.get("/api/status")[2])
        # the retained differential, once MQTT has caught up with the whole slide
        sent = wait_for(
            lambda: [
                m
                for m in lab.on("/sessions/SLIDE-9/differential")
                if m["total"] == page["differential"]["total"]
            ],
            30,
            "the slide's differential on MQTT",
        )[-1]
        status = wait_for(lambda: lab.on("/status"), 30, "the MQTT status")[-1]
    finally:
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.stderr
        lab.close()
        broker.stop()
    summary = json.loads((tmp_path / "s.json").read_text())

    # -- the figure: the page's, and the same value everywhere ---------------------------------------
    (rule,) = page["differential"]["alerts"]
    n, of, x = rule["n"], rule["cells"], rule["percent"]
    words = f"{n} of {of} confident white cells"
    assert of == page["differential"]["total"] and 0 < n < of and x == round(100 * n / of, 1), rule
    assert rule["active"]  # 20 % of 10 cells: the known microscope's dense cells make it fire

    def row(table):
        (r,) = [r for r in table if r["label"] == "dense"]
        return r["count"], r["percent"]

    assert row(page["differential"]["counts"]) == (n, x)  # the rule's figure is the differential's row
    (summarised,) = summary["alert_rules"]
    assert (summarised["n"], summarised["cells"], summarised["percent"]) == (n, of, x)
    assert row(summary["differential_table"]) == (n, x) and summary["white_cells_counted"]["n"] == of
    (mqtt_rule,) = sent["alerts"]
    assert (mqtt_rule["n"], mqtt_rule["cells"], mqtt_rule["percent"]) == (n, of, x)
    assert row(sent["counts"]) == (n, x) and sent["white_cells_counted"] == {
        "n": of,
        "what": "confident white cells",
    }

    report = edge_cli(
        "report", "--db", db, "--out", "r.html", "--pdf", "r.pdf", "--fhir", "r.json", cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    pdf = " ".join(
        subprocess.run(
            ["pdftotext", "-raw", "r.pdf", "-"], cwd=tmp_path, capture_output=True, text=True
        ).stdout.split()
    )
    # the differential's row (model, then verified: no cell is reviewed) and the alert, in words
    assert f"Dense {n} {x:.1f}" in pdf and re.search(rf"White cells counted {of} 100\.0 {of} 100\.0", pdf), (
        pdf
    )
    assert pdf.count(f"{x:.1f} % ({words}) · FIRING") == 2  # model and verified
    assert f"Percentages are of the white cells counted: the confident white cells ({of} by the model" in pdf
    html = (tmp_path / "r.html").read_text()
    assert f"{x:.1f} % ({words})" in html
    fhir = FhirBundle.model_validate_json((tmp_path / "r.json").read_text())
    found = {}
    for entry in fhir.entry:
        found.setdefault(entry.resource.get_resource_type(), []).append(entry.resource)
    (dense,) = [o for o in found["Observation"] if o.code.text.startswith("Dense")]
    assert float(dense.valueQuantity.value) == x and f"after review {words} = {x:.1f} %" in dense.note[0].text
    (diagnostic,) = found["DiagnosticReport"]
    assert f"dense fraction: {x:.1f} % dense ({words}), FIRING" in diagnostic.conclusion
    # the page's line says the same (the text the page builds from /api/status)
    assert f"{n} of {of} {rule['base']}" == words

    # -- the calibrated microscope: its name, when, and its held-back accuracy, on every screen ---------
    site = Bundle.load(calibrated).manifest.site
    accuracy = site.held_back["accuracy_after"]
    for shown in (page["site"], summary["site"], status["site"]):
        assert (shown["calibrated"], shown["name"], shown["calibrated_at"]) == (
            True,
            "scope3",
            site.calibrated_at,
        )
        assert shown["held_back_accuracy"] == accuracy and shown["decision"] in ("matches", "checking")
    microscope = f"site scope3, calibrated {site.calibrated_at}, {100 * accuracy:.1f} % on held-back cells"
    assert page["site"]["words"]["microscope"] == microscope and microscope in pdf
    (device,) = found["Device"]
    assert "microscope scope3" in [n.name for n in device.deviceName]
    assert f"Microscope: {microscope}." in [n.text for n in device.note]
