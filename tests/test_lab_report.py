"""`edge report` and `edge review export` as a clinic runs them: the real CLI in a subprocess on a real
results.db; the PDF rendered by pdftoppm and read back by pdftotext; the FHIR bundle parsed back and
validated by fhir.resources (R4B); a POST to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from fhir.resources.R4B.bundle import Bundle

from edge.dataset import scan_labelled
from edge.results.reviews import ReviewBook
from tests.http_servers import Quiet, Server, answer
from tests.lab_slides import LABELS, write_slide

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ["myeloblast"]
CHOICES = [*LABELS, "unknown"]
CELLS = (
    [("seg_neutrophil", 0.99, False)] * 30
    + [("monocyte", 0.98, False)] * 8
    + [("basophil", 0.55, True)] * 3
    + [("myeloblast", 0.96, False)] * 5
    + [("erythroblast", 0.99, False)] * 4
    + [("unknown", 0.3, True)] * 2
)


def edge(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=180,
    )


def needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing (poppler-utils; .ci/run installs it)")
        pytest.skip(f"{tool} not installed (apt install poppler-utils)")
    return path


def review_all(db: Path, session: str, reclassify: dict[str, str], sign: bool) -> None:
    """The technician's work: every queued cell confirmed, or reclassified as `reclassify` says."""
    book = ReviewBook(db)
    for cell in book.queue(session, ALERTS):
        book.review(session, cell.id, reclassify.get(cell.label, cell.label), "A. Tech", CHOICES)
    if sign:
        book.sign(session, "A. Tech", ALERTS)
    book.close()


@pytest.fixture()
def signed_slide(tmp_path) -> Path:
    db = tmp_path / "results.db"
    write_slide(db, "SLIDE-042", CELLS)
    review_all(db, "SLIDE-042", {"basophil": "monocyte", "unknown": "seg_neutrophil"}, sign=True)
    return db


def test_report_html_pdf_and_fhir_of_a_signed_slide(signed_slide, tmp_path):
    needs("pdftoppm"), needs("pdftotext")
    run = edge(
        "report",
        "--db", signed_slide, "--session", "SLIDE-042",
        "--out", "report.html", "--pdf", "report.pdf", "--fhir", "report.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "signed by A. Tech" in run.stdout

    html = (tmp_path / "report.html").read_text()
    assert "SLIDE-042" in html and "data:image/jpeg;base64," in html  # the gallery travels with the file
    assert html.count("<figure") == 5 + 3 + 2  # every flagged cell: alert class, uncertain, unknown

    subprocess.run(["pdftoppm", "-r", "60", "-png", "report.pdf", "page"], cwd=tmp_path, check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert pages, "pdftoppm rendered no page"
    first = cv2.imread(str(pages[0]))
    assert first.shape[0] > first.shape[1] > 400 and first.std() > 10  # an A4 page with something on it
    text = subprocess.run(
        ["pdftotext", "-layout", "report.pdf", "-"], cwd=tmp_path, capture_output=True, text=True
    ).stdout
    squashed = " ".join(text.split())
    for expected in (
        "White-cell differential · slide SLIDE-042",
        "Screening support for trained staff, not a diagnosis.",
        "ab" * 32,  # the model's sha256
        "mobilenetv2-int8",
        "Signed by A. Tech",
        "SIGNED · final",
        "blast fraction",
        "No patient identifiers are stored",
    ):
        assert expected in squashed, expected
    # white cells: 30 + 8 + 3 + 5 = 46; after review 30 + 2 (unknown -> neutrophil) + 11 + 0 + 5 = 48
    assert "Monocyte 8 17.4" in squashed and "11 22.9" in squashed
    assert "White cells counted 46 100.0 48 100.0" in squashed

    bundle = Bundle.model_validate_json((tmp_path / "report.json").read_text())  # validates every resource
    assert bundle.type == "transaction"
    resources = [e.resource for e in bundle.entry]
    kinds = [r.get_resource_type() for r in resources]
    assert kinds.count("Observation") == len(LABELS) and kinds.count("Device") == 1
    # no patient identifiers anywhere: no Patient resource, no subject; the slide id is the link
    # (the Practitioner is the technician who signed)
    assert "Patient" not in kinds and set(kinds) <= {
        "DiagnosticReport",
        "Observation",
        "Device",
        "Practitioner",
    }
    assert all(getattr(r, "subject", None) is None for r in resources)
    report = next(r for r in resources if r.get_resource_type() == "DiagnosticReport")
    assert report.status == "final" and report.identifier[0].value == "SLIDE-042"
    assert report.presentedForm[0].data == (tmp_path / "report.pdf").read_bytes()  # base64 in the JSON
    device = next(r for r in resources if r.get_resource_type() == "Device")
    assert "ab" * 32 in [v.value for v in device.version]
    obs = {o.code.text: o for o in resources if o.get_resource_type() == "Observation"}
    codes = {o.code.coding[0].code if o.code.coding else None: o for o in obs.values()}
    assert set(codes) == {"770-8", "5905-5", "706-2", "26446-5", "58413-6"}
    mono = codes["5905-5"]
    assert (
        mono.status == "final"
        and mono.valueQuantity.code == "%"
        and mono.valueQuantity.system == "http://unitsofmeasure.org"
    )
    assert float(mono.valueQuantity.value) == pytest.approx(22.9)
    assert codes["58413-6"].valueQuantity.code == "/100{WBCs}"
    assert {r.reference for r in report.result} == {
        e.fullUrl for e in bundle.entry if e.resource.get_resource_type() == "Observation"
    }


def test_an_unsigned_slide_is_preliminary_and_unknown_classes_are_text_coded(tmp_path):
    db = tmp_path / "results.db"
    write_slide(db, "S-2", [("round", 0.9, False)] * 3 + [("lobed", 0.5, True)], labels=["lobed", "round"])
    run = edge("report", "--db", db, "--out", "r.html", "--fhir", "r.json", cwd=tmp_path)  # the only session
    assert run.returncode == 0, run.stderr
    assert "NOT SIGNED · preliminary" in (tmp_path / "r.html").read_text()
    bundle = Bundle.model_validate_json((tmp_path / "r.json").read_text())
    resources = [e.resource for e in bundle.entry]
    assert {r.status for r in resources if r.get_resource_type() in ("Observation", "DiagnosticReport")} == {
        "preliminary"
    }
    assert "Practitioner" not in [r.get_resource_type() for r in resources]
    observations = [r for r in resources if r.get_resource_type() == "Observation"]
    assert all(not o.code.coding and o.code.text for o in observations)  # no LOINC code for these classes
    # nothing is verified before a review: the notes do not call the model's count verified
    notes = [o.note[0].text for o in observations]
    assert all("verified by a technician: 0 cell(s) of this class (reviewed 0 of 1" in n for n in notes), (
        notes
    )
    assert not any(n.startswith("verified") for n in notes)
    assert "reviewed 0 of 1" in (tmp_path / "r.html").read_text()


class LisServer(Server):
    """A FHIR endpoint on 127.0.0.1 that answers with the given statuses in turn and keeps each request."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.requests = list(statuses), []
        outer = self

        class Handler(Quiet):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, self.headers["Content-Type"], body))
                code = outer.statuses.pop(0) if outer.statuses else 200
                reply = json.dumps(
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "no such profile"}],
                    }
                    if code >= 400
                    else {"resourceType": "Bundle", "type": "transaction-response"}
                )
                answer(self, code, reply.encode())

        super().__init__(Handler)


def test_fhir_url_posts_the_bundle_and_retries_a_failing_server(signed_slide, tmp_path):
    with LisServer([503, 200]) as lis:
        run = edge("report", "--db", signed_slide, "--fhir-url", lis.url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "HTTP 503" in run.stderr and "retrying (1/3)" in run.stderr and "sent to" in run.stdout
    assert len(lis.requests) == 2
    path, content_type, body = lis.requests[-1]
    assert path == "/fhir" and content_type == "application/fhir+json"
    assert Bundle.model_validate_json(body).entry[-1].resource.status == "final"


def test_a_server_that_refuses_the_bundle_gets_one_try_and_one_line(signed_slide, tmp_path):
    with LisServer([422]) as lis:
        run = edge("report", "--db", signed_slide, "--fhir-url", lis.url, cwd=tmp_path)
    assert run.returncode == 6 and len(lis.requests) == 1
    assert (
        run.stderr.strip().count("\n") == 0 and "refused the bundle: HTTP 422 no such profile" in run.stderr
    )


def test_review_export_writes_class_folders_that_the_data_layer_reads(signed_slide, tmp_path):
    write_slide(signed_slide, "SLIDE-043", [("myeloblast", 0.9, False)] * 2)  # reviewed, but not signed
    review_all(signed_slide, "SLIDE-043", {}, sign=False)
    lost = sorted((tmp_path / "flagged" / "SLIDE-042").glob("*_myeloblast.jpg"))[0]
    lost.unlink()  # an archive that was paused (low disk) has no crop for a cell
    site = tmp_path / "site"
    run = edge("review", "export", "--db", signed_slide, "--out", site, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "exported 9 reviewed cells from 1 slide(s)" in run.stdout and "skipped 1 unsigned" in run.stdout
    assert "1 without an archived crop" in run.stdout
    images = scan_labelled(site, labels=LABELS)
    by_label = {}
    for item in images.items:
        by_label[images.labels[item.label]] = by_label.get(images.labels[item.label], 0) + 1
    # 3 basophils reclassified as monocytes, the 2 unknown cells as neutrophils, 4 of 5 blasts confirmed
    assert by_label == {"monocyte": 3, "myeloblast": 4, "seg_neutrophil": 2}
    listing = (site / "reviews.csv").read_text().splitlines()
    assert len(listing) == 1 + 10 and sum(",no_crop," in r for r in listing) == 1
    run = edge(
        "review", "export", "--db", signed_slide, "--out", tmp_path / "all", "--unsigned", cwd=tmp_path
    )
    assert "exported 11 reviewed cells from 2 slide(s)" in run.stdout


def test_review_export_is_spreadsheet_safe_and_its_file_names_never_collide(tmp_path):
    db = tmp_path / "results.db"
    slides = ("S-1", "S-1_")  # two slide ids that one file name must not serve
    for sid in slides:
        write_slide(db, sid, [("myeloblast", 0.96, False)] * 2)
    book = ReviewBook(db)
    for sid in slides:
        first, second = book.queue(sid, ALERTS)
        book.review(sid, first.id, "myeloblast", '=HYPERLINK("http://evil.example","x")', CHOICES)
        book.review(sid, second.id, "monocyte", "+A. Tech", CHOICES)
    book.close()
    site = tmp_path / "site"
    run = edge("review", "export", "--db", db, "--out", site, "--unsigned", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (
        "exported 4 reviewed cells from 2 slide(s)" in run.stdout and "monocyte 2, myeloblast 2" in run.stdout
    )
    images = sorted(str(p.relative_to(site)) for p in site.rglob("*.jpg"))
    assert len(images) == 4 and {Path(i).name.split("_0")[0] for i in images} == {"S-1", "S-1_"}
    with open(site / "reviews.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["reviewer"] for r in rows} == {'\'=HYPERLINK("http://evil.example","x")', "'+A. Tech"}
    assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for v in r.values())


def test_review_export_takes_only_cells_decided_one_by_one(tmp_path):
    db = tmp_path / "results.db"
    write_slide(db, "S-9", [("myeloblast", 0.96, False)] * 4)
    book = ReviewBook(db)
    cells = book.queue("S-9", ALERTS)
    book.review("S-9", cells[0].id, "myeloblast", "A. Tech", CHOICES, seconds=2.0)
    book.review("S-9", cells[1].id, "monocyte", "A. Tech", CHOICES, seconds=1.5)
    for c in cells[2:]:  # a held Enter
        book.review("S-9", c.id, "myeloblast", "A. Tech", CHOICES, seconds=0.12)
    book.close()
    site = tmp_path / "site"
    run = edge("review", "export", "--db", db, "--out", site, "--unsigned", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # what it wrote, per class; the hasty decisions are not taught to `edge adapt`
    assert "exported 2 reviewed cells from 1 slide(s)" in run.stdout, run.stdout
    assert "monocyte 1, myeloblast 1" in run.stdout and "2 decided too fast" in run.stdout
    assert len(list(site.rglob("*.jpg"))) == 2
    with open(site / "reviews.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["status"], r["review_seconds"]) for r in rows) == [
        ("exported", "1.5"),
        ("exported", "2.0"),
        ("too_fast", "0.12"),
        ("too_fast", "0.12"),
    ]
