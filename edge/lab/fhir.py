"""A slide as an HL7 FHIR bundle (R4B models of fhir.resources: every resource is validated as it is
built), and sending it to a laboratory system.

The Bundle is a `transaction`, what a FHIR server takes at its base URL in one POST:
- Device: this microscope's computer, the model bundle (name, sha256) that classified the cells, and
  the microscope as the daemon recorded it (calibrated to which site, when, how well; the gate's check;
  the scale);
- Practitioner: the technician who signed (a name only), once the slide is signed;
- one Observation per class: the percentage of the white cells counted after review in UCUM `%`
  (erythroblasts per 100 white cells), coded with LOINC where edge.catalogue has a checked code and as
  text otherwise; the counts, the model's value, the 95 % interval and how many cells a technician
  verified (reviewed N of M, edge/results/verification.py) are in the note, in words. On a microscope
  the gate found different, a class an alert rule watches (the blasts) has no value, only a
  dataAbsentReason and a note that says why: it is not a result;
- DiagnosticReport: the slide id as identifier, the session's period, the observations, who signed
  (resultsInterpreter), the PDF report when one was made (the Device is named by each Observation:
  R4 allows no Device as a report's performer), and a conclusion that gives every alert rule's
  figure, or says the microscope is not calibrated. No Patient: the system stores no patient
  identifier; the laboratory system links the slide id to its patient.
Status is `preliminary` until the slide is signed, `final` after. Every figure is the report's
(edge/lab/slide.py), so the page, the report and FHIR give one number.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import time
import uuid
from types import SimpleNamespace

from edge import __version__
from edge.catalogue import CellClass
from edge.lab.report import INTENDED_USE
from edge.lab.slide import ClassRow, Slide, iso
from edge.results.verification import Verification
from edge.site import ALERT_WITHHELD

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SLIDE_SYSTEM = "urn:edge-hemato:slide"  # identifier system of the slide id; a site may map it in its LIS
DEVICE_SYSTEM = "urn:edge-hemato:device"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service sections: HM, haematology
URI_SYSTEM = "urn:ietf:rfc:3986"  # an identifier whose value is a URI: each resource's own urn:uuid
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# Namespace for the bundle's urn:uuid ids: the same slide and state give the same ids.
NAMESPACE = uuid.UUID("4d0f6a52-5b8e-4f7e-9d53-0d7a3c1b2e60")


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


def slide_state(slide: Slide, pdf: bytes | None) -> str:
    """What the slide's resources say, in short: a new cell, a review, a signature or an attached PDF
    changes it; sending the same slide again (a retry, a second run) does not."""
    digest = hashlib.sha256()
    for c in slide.cells:
        digest.update(f"{c.id}:{c.label}:{c.verified_label}:{c.uncertain};".encode())
    sign = slide.sign
    digest.update(f"{sign.status}:{sign.name}:{sign.ts}:{slide.count_uncertain}:{pdf is not None}".encode())
    return digest.hexdigest()[:32]


def _urn(slide: Slide, state: str, *parts) -> str:
    return "urn:uuid:" + str(uuid.uuid5(NAMESPACE, "/".join([slide.session_id, state, *map(str, parts)])))


def _code(cls: CellClass, CodeableConcept, Coding):
    if cls.loinc:
        return CodeableConcept(
            coding=[Coding(system=LOINC, code=cls.loinc.code, display=cls.loinc.display)], text=cls.display
        )
    # No checked LOINC term for this class: the name only, which a receiver can map.
    return CodeableConcept(text=f"{cls.display} (image classification, % of white cells)")


def _decided(row: ClassRow, verification: Verification) -> str:
    """How many cells of the class a technician decided (edge/results/verification.py: none before a
    review); the value itself is the count after review (edge/lab/slide.py)."""
    return (
        f"verified by a technician: {verification.verified.get(row.cls.label, 0)} cell(s) of this class "
        f"({verification.text()} cells that needed a look)"
    )


def _note(row: ClassRow, base: str, verification: Verification) -> str:
    """The counts behind the value: after review, the model's, and how many a technician decided."""
    m, v = row.model, row.verified
    decided = _decided(row, verification)
    if row.per_100_white:
        return f"after review {v.n} per {v.of} {base}; model {m.n} per {m.of}; {decided}"
    lo, hi = v.interval_percent
    return (
        f"after review {v.words(base)} = {v.percent:.1f} % (95 % Wilson interval {lo:.1f}-{hi:.1f} %); "
        f"model {m.words(base)} = {m.percent:.1f} %; {decided}"
    )


def _withheld_note(row: ClassRow, base: str, verification: Verification) -> str:
    m, v = row.model, row.verified
    return (
        f"not given as a result: {ALERT_WITHHELD} (its cells differ from the model's), so every cell needs review; "
        f"after review {v.n}, model {m.n} of the {base}; {_decided(row, verification)}"
    )


def conclusion(slide: Slide) -> str:
    """Every alert rule's figure after review in words, or why none is given (the microscope)."""
    if slide.differs:
        notes = "".join(f" {a.verified.note}." for a in slide.alerts() if a.verified.note)
        return (
            f"Microscope not calibrated: its first {slide.site.cells_checked} cells differ from the cells the "
            f"model knows. Every cell needs review; no blast figure is given as a result.{notes}"
        )
    figures = [
        f"{a.model.name}: {a.verified.percent:.1f} % {'/'.join(a.model.classes)} ({a.verified.words()}), "
        + ("FIRING" if a.verified.active else "not firing")
        for a in slide.alerts()
    ]
    return ("; ".join(figures) or "No alert rule configured") + "."


def build_bundle(slide: Slide, pdf: bytes | None = None):
    """The slide as a validated fhir.resources R4B Bundle (type transaction)."""
    return _BundleBuilder(slide).build(pdf)


class _BundleBuilder:
    """The resources of one slide's bundle, each added as a transaction entry (POST) in order.

    Every entry is a conditional create on a stable identifier (the Device's host and model; every
    other resource's own urn:uuid, derived from the slide's state), so a server that took the
    transaction once keeps one copy however often it is retried or re-sent."""

    def __init__(self, slide: Slide):
        self.m = _models()
        self.slide = slide
        self.state = ""
        self.verification = slide.verification
        self.status = "final" if slide.sign.signed else "preliminary"
        self.issued = iso(time.time())
        self.period = {"start": iso(slide.started), **({"end": iso(slide.ended)} if slide.ended else {})}
        self.entries: list = []

    def concept(self, text: str | None = None, system: str = "", code: str = ""):
        """A CodeableConcept: a text, or one code of `system`."""
        coding = [self.m.coding.Coding(system=system, code=code)] if code else None
        return self.m.codeableconcept.CodeableConcept(coding=coding, text=text)

    def urn(self, *parts) -> str:
        return _urn(self.slide, self.state, *parts)

    def own_id(self, url: str):
        """The identifier that names a resource by its own urn:uuid (what ifNoneExist searches)."""
        return self.m.identifier.Identifier(system=URI_SYSTEM, value=url)

    def add(self, resource, url: str, if_none_exist: str = "") -> str:
        request = {
            "method": "POST",
            "url": resource.get_resource_type(),
            "ifNoneExist": if_none_exist or f"identifier={URI_SYSTEM}|{url}",
        }
        bundle = self.m.bundle
        self.entries.append(
            bundle.BundleEntry(fullUrl=url, resource=resource, request=bundle.BundleEntryRequest(**request))
        )
        return url

    def build(self, pdf: bytes | None):
        self.state = slide_state(self.slide, pdf)
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
                *self.site_names(),
            ],
            version=[
                m.device.DeviceVersion(type=self.concept("model sha256"), value=slide.model_sha),
                m.device.DeviceVersion(type=self.concept("software"), value=f"edge-hemato {__version__}"),
            ],
            property=self.site_properties() or None,
            note=[{"text": INTENDED_USE}, *self.site_notes()],
        )
        return self.add(device, self.urn("device"), if_none_exist=f"identifier={DEVICE_SYSTEM}|{key}")

    # The microscope, as the daemon recorded it (edge/site.py SiteState): a calibrated bundle's site by
    # name, whether it was calibrated and what the gate found (codes a receiver can test), the scale
    # the cells were cut at, and in words the calibration, its held-back accuracy and the banner.
    def site_names(self) -> list:
        site = self.slide.site
        if site is None or not site.calibrated:
            return []
        return [self.m.device.DeviceDeviceName(name=f"microscope {site.name}", type="other")]

    def site_properties(self) -> list:
        site, prop = self.slide.site, self.m.device.DeviceProperty
        if site is None:
            return []
        found = [
            prop(
                type=self.concept("microscope calibrated"),
                valueCode=[self.concept(str(site.calibrated).lower())],
            ),
            prop(type=self.concept("microscope check (the gate)"), valueCode=[self.concept(site.decision)]),
        ]
        if site.scale_rbc_px:
            scale = {"value": site.scale_rbc_px, "unit": "px", "system": UCUM, "code": "{pixels}"}
            found.append(prop(type=self.concept("red-cell diameter (the scale)"), valueQuantity=[scale]))
        return found

    def site_notes(self) -> list[dict]:
        site = self.slide.site
        if site is None:
            return [{"text": "Microscope: not recorded (the session predates it)."}]
        notes = [
            f"Microscope: {site.microscope}.",
            f"Microscope check: {site.check}.",
            f"Scale: {site.scale}.",
        ]
        return [{"text": t} for t in [*notes, *([site.banner] if site.banner else [])]]

    def add_signer(self) -> list[dict]:
        """The Practitioner who signed, as the references that name them (none before signing)."""
        sign = self.slide.sign
        if not sign.signed:
            return []
        url = self.urn("signer")
        practitioner = self.m.practitioner.Practitioner(
            identifier=[self.own_id(url)], name=[self.m.humanname.HumanName(text=sign.name)]
        )
        return [{"reference": self.add(practitioner, url), "display": sign.name}]

    def add_observation(self, row: ClassRow, device_url: str, interpreter: list[dict]) -> dict:
        cls, signed, slide = row.cls, self.slide.sign.signed, self.slide
        unit, unit_code = ("/100 WBC", "/100{WBCs}") if row.per_100_white else ("%", "%")
        url = self.urn("observation", cls.label)
        if slide.withheld(row):  # the microscope differs: a blast figure is not a result
            value = {"dataAbsentReason": self.concept(ALERT_WITHHELD, DATA_ABSENT, "error")}
            note = _withheld_note(row, slide.base, self.verification)
        else:
            quantity = {"value": row.verified.percent, "unit": unit, "system": UCUM, "code": unit_code}
            value, note = {"valueQuantity": quantity}, _note(row, slide.base, self.verification)
        observation = self.m.observation.Observation(
            identifier=[self.own_id(url)],
            status=self.status,
            category=[self.concept(system=CATEGORY_SYSTEM, code="laboratory")],
            code=_code(cls, self.m.codeableconcept.CodeableConcept, self.m.coding.Coding),
            effectivePeriod=self.period,
            issued=self.issued,
            **value,
            method=self.concept(
                "image classification of stained cells" + (", reviewed by a technician" if signed else "")
            ),
            device={"reference": device_url},
            performer=interpreter or None,
            note=[{"text": note}],
        )
        return {"reference": self.add(observation, url), "display": cls.display}

    def add_report(self, results: list[dict], interpreter: list[dict], pdf: bytes | None) -> None:
        slide = self.slide
        form = {"contentType": "application/pdf", "data": base64.b64encode(pdf or b"").decode()}
        url = self.urn("report")
        report = self.m.diagnosticreport.DiagnosticReport(
            identifier=[
                self.m.identifier.Identifier(system=SLIDE_SYSTEM, value=slide.session_id),
                self.own_id(url),
            ],
            status=self.status,
            category=[self.concept(system=V2_0074, code="HM")],
            code=self.concept("White-cell differential, image classification of a stained blood slide"),
            effectivePeriod=self.period,
            issued=self.issued,
            resultsInterpreter=interpreter or None,
            result=results,
            conclusion=f"{INTENDED_USE} {conclusion(slide)}",
            presentedForm=[{**form, "title": f"{slide.session_id}.pdf"}] if pdf else None,
        )
        self.add(report, url)


def bundle_json(resource) -> str:
    return resource.model_dump_json(indent=2, exclude_none=True)
