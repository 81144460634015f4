"""A slide as an HL7 FHIR bundle (R4B models of fhir.resources: every resource is validated as it is
built), and sending it to a laboratory system.

The Bundle is a `transaction`, what a FHIR server takes at its base URL in one POST:
- Device: this microscope's computer and the model bundle (name, sha256) that classified the cells;
- Practitioner: the technician who signed (a name only), once the slide is signed;
- one Observation per class: the percentage of white cells after review in UCUM `%` (erythroblasts per
  100 white cells), coded with LOINC where edge.catalogue has a checked code and as text otherwise; the
  counts, the model's value, the 95 % interval and how many cells a technician verified (reviewed N of
  M, edge/results/verification.py) are in the note;
- DiagnosticReport: the slide id as identifier, the session's period, the observations, who signed
  (resultsInterpreter), and the PDF report when one was made (the Device is named by each Observation:
  R4 allows no Device as a report's performer). No Patient: the system stores no patient identifier; the laboratory
  system links the slide id to its patient.
Status is `preliminary` until the slide is signed, `final` after.
"""

from __future__ import annotations

import base64
import importlib
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from types import SimpleNamespace

from edge import __version__
from edge.catalogue import CellClass
from edge.errors import EdgeError
from edge.lab.report import INTENDED_USE
from edge.lab.slide import ClassRow, Slide, iso
from edge.results.verification import Verification

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SLIDE_SYSTEM = "urn:edge-hemato:slide"  # identifier system of the slide id; a site may map it in its LIS
DEVICE_SYSTEM = "urn:edge-hemato:device"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service sections: HM, haematology
# Namespace for the bundle's urn:uuid ids: the same slide and state give the same ids.
NAMESPACE = uuid.UUID("4d0f6a52-5b8e-4f7e-9d53-0d7a3c1b2e60")


class FhirError(EdgeError):
    exit_code = 6


# The fhir.resources R4B modules the bundle is built from.
_MODULES = (
    "bundle",
    "codeableconcept",
    "coding",
    "device",
    "diagnosticreport",
    "humanname",
    "identifier",
    "observation",
    "practitioner",
)


def _models() -> SimpleNamespace:
    """The fhir.resources R4B modules of _MODULES, by name (m.bundle, m.device, ...)."""
    try:
        return SimpleNamespace(**{n: importlib.import_module(f"fhir.resources.R4B.{n}") for n in _MODULES})
    except ImportError as exc:
        from edge.errors import MissingExtraError

        raise MissingExtraError("edge report --fhir", "device", exc.name or "fhir.resources") from None


def _urn(slide: Slide, *parts) -> str:
    return "urn:uuid:" + str(
        uuid.uuid5(NAMESPACE, "/".join([slide.session_id, str(slide.sign.ts), *map(str, parts)]))
    )


def _code(cls: CellClass, CodeableConcept, Coding):
    if cls.loinc:
        return CodeableConcept(
            coding=[Coding(system=LOINC, code=cls.loinc.code, display=cls.loinc.display)], text=cls.display
        )
    # No checked LOINC term for this class: the name only, which a receiver can map.
    return CodeableConcept(text=f"{cls.display} (image classification, % of white cells)")


def _note(row: ClassRow, verification: Verification) -> str:
    """The counts behind the value: after review, the model's, and how many a technician decided
    (edge/results/verification.py: none before a review)."""
    m, v = row.model, row.verified
    decided = (
        f"verified by a technician: {verification.verified.get(row.cls.label, 0)} cell(s) of this class "
        f"({verification.text()} cells that needed a look)"
    )
    if row.per_100_white:
        return f"after review {v.n} per {v.of} white cells; model {m.n} per {m.of}; {decided}"
    lo, hi = v.interval
    return (
        f"after review {v.n}/{v.of} white cells = {v.percent:.1f} % (95 % Wilson interval {lo:.1f}-{hi:.1f} %); "
        f"model {m.n}/{m.of} = {m.percent:.1f} %; {decided}"
    )


def build_bundle(slide: Slide, pdf: bytes | None = None):
    """The slide as a validated fhir.resources R4B Bundle (type transaction)."""
    return _BundleBuilder(slide).build(pdf)


class _BundleBuilder:
    """The resources of one slide's bundle, each added as a transaction entry (POST) in order."""

    def __init__(self, slide: Slide):
        self.m = _models()
        self.slide = slide
        self.verification = slide.verification
        self.status = "final" if slide.sign.signed else "preliminary"
        self.issued = iso(time.time())
        self.period = {"start": iso(slide.started), **({"end": iso(slide.ended)} if slide.ended else {})}
        self.entries: list = []

    def concept(self, text: str | None = None, system: str = "", code: str = ""):
        """A CodeableConcept: a text, or one code of `system`."""
        coding = [self.m.coding.Coding(system=system, code=code)] if code else None
        return self.m.codeableconcept.CodeableConcept(coding=coding, text=text)

    def add(self, resource, url: str, if_none_exist: str | None = None) -> str:
        request = {"method": "POST", "url": resource.get_resource_type()}
        if if_none_exist:
            request["ifNoneExist"] = if_none_exist
        bundle = self.m.bundle
        self.entries.append(
            bundle.BundleEntry(fullUrl=url, resource=resource, request=bundle.BundleEntryRequest(**request))
        )
        return url

    def build(self, pdf: bytes | None):
        device_url = self.add_device()
        interpreter = self.add_signer()
        results = [self.add_observation(row, device_url, interpreter) for row in self.slide.rows()]
        self.add_report(results, interpreter, pdf)
        return self.m.bundle.Bundle(type="transaction", timestamp=self.issued, entry=self.entries)

    def add_device(self) -> str:
        m, slide = self.m, self.slide
        key = f"{slide.host}/{slide.model_sha}"
        device = m.device.Device(
            identifier=[m.identifier.Identifier(system=DEVICE_SYSTEM, value=key)],
            status="active",
            deviceName=[
                m.device.DeviceDeviceName(name=f"edge-hemato on {slide.host}", type="user-friendly-name"),
                m.device.DeviceDeviceName(name=slide.bundle_name, type="model-name"),
            ],
            version=[
                m.device.DeviceVersion(type=self.concept("model sha256"), value=slide.model_sha),
                m.device.DeviceVersion(type=self.concept("software"), value=f"edge-hemato {__version__}"),
            ],
            note=[{"text": INTENDED_USE}],
        )
        return self.add(device, _urn(slide, "device"), if_none_exist=f"identifier={DEVICE_SYSTEM}|{key}")

    def add_signer(self) -> list[dict]:
        """The Practitioner who signed, as the references that name them (none before signing)."""
        sign = self.slide.sign
        if not sign.signed:
            return []
        practitioner = self.m.practitioner.Practitioner(name=[self.m.humanname.HumanName(text=sign.name)])
        return [{"reference": self.add(practitioner, _urn(self.slide, "signer")), "display": sign.name}]

    def add_observation(self, row: ClassRow, device_url: str, interpreter: list[dict]) -> dict:
        cls, signed = row.cls, self.slide.sign.signed
        unit, unit_code = ("/100 WBC", "/100{WBCs}") if row.per_100_white else ("%", "%")
        observation = self.m.observation.Observation(
            status=self.status,
            category=[self.concept(system=CATEGORY_SYSTEM, code="laboratory")],
            code=_code(cls, self.m.codeableconcept.CodeableConcept, self.m.coding.Coding),
            effectivePeriod=self.period,
            issued=self.issued,
            valueQuantity={
                "value": round(row.verified.percent, 1),
                "unit": unit,
                "system": UCUM,
                "code": unit_code,
            },
            method=self.concept(
                "image classification of stained cells" + (", reviewed by a technician" if signed else "")
            ),
            device={"reference": device_url},
            performer=interpreter or None,
            note=[{"text": _note(row, self.verification)}],
        )
        return {
            "reference": self.add(observation, _urn(self.slide, "observation", cls.label)),
            "display": cls.display,
        }

    def add_report(self, results: list[dict], interpreter: list[dict], pdf: bytes | None) -> None:
        slide = self.slide
        alerts = [a for a in slide.alerts() if a.verified_active]
        conclusion = (
            "; ".join(
                f"Alert {a.name}: {100 * a.verified_fraction:.1f} % {'/'.join(a.classes)}" for a in alerts
            )
            or "No alert rule firing"
        )
        form = {"contentType": "application/pdf", "data": base64.b64encode(pdf or b"").decode()}
        report = self.m.diagnosticreport.DiagnosticReport(
            identifier=[self.m.identifier.Identifier(system=SLIDE_SYSTEM, value=slide.session_id)],
            status=self.status,
            category=[self.concept(system=V2_0074, code="HM")],
            code=self.concept("White-cell differential, image classification of a stained blood slide"),
            effectivePeriod=self.period,
            issued=self.issued,
            resultsInterpreter=interpreter or None,
            result=results,
            conclusion=f"{INTENDED_USE} {conclusion}.",
            presentedForm=[{**form, "title": f"{slide.session_id}.pdf"}] if pdf else None,
        )
        self.add(report, _urn(slide, "report"))


def bundle_json(resource) -> str:
    return resource.model_dump_json(indent=2, exclude_none=True)


def post_bundle(
    url: str, body: str, retries: int = 3, timeout_s: float = 15.0, backoff_s: float = 1.0, log=print
) -> int:
    """POST the bundle to a FHIR server; retries (backoff doubling) on network errors, 408, 429 and
    5xx. Returns the HTTP status; a refusal (other 4xx) or the last failure is a FhirError."""
    data = body.encode()
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
                "User-Agent": f"edge-hemato/{__version__} ({socket.gethostname()})",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {_outcome(exc.read())}".strip()
            if exc.code not in (408, 429) and exc.code < 500:
                raise FhirError(f"{url}: the server refused the bundle: {last}") from None
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt < retries:
            log(f"fhir: {url}: {last}; retrying ({attempt + 1}/{retries})")
    raise FhirError(f"{url}: not sent after {retries + 1} attempts ({last})")


def _outcome(body: bytes) -> str:
    """The first diagnostic of an OperationOutcome, or the start of whatever came back."""
    try:
        issues = json.loads(body).get("issue") or []
        return "; ".join(i.get("diagnostics") or i.get("code", "") for i in issues)[:200]
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip().splitlines()[0][:200] if body.strip() else ""
