"""What the daemon and the lab need to know about a model's class names: how to print them, whether they
are white cells (the denominator of a differential), and their LOINC code where one fits.

Labels stay plain strings everywhere else; a label this catalogue does not know (a synthetic class, a
new model's class) is a white cell without a code: reported by name, sent as a text-coded Observation.

LOINC codes, each checked against a published page (see docs/report.md, "LOINC codes"):
- 770-8, 736-9, 5905-5, 713-8, 706-2 (<cell>/100 leukocytes in Blood by Automated count): HL7 US Core
  example Observation-neutrophils (770-8) and the HL7 CTC Adverse Events IG's CBC example
  (build.fhir.org/ig/standardhealth/fsh-ae, Observation-r201-8/-10/-12/-14/-16).
- 26446-5 Blasts/100 leukocytes in Blood: loinc.org/24318-8 (the differential panel that lists it). No
  automated-count blast percent term was found; 709-6 is "by Manual count", which an image classifier
  is not, so the method-less term is used.
- 58413-6 Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count: loinc.org/58413-6.
  Erythroblasts are not white cells: they are reported per 100 white cells, as labs report NRBCs.
Immature granulocytes, platelets, unknown cells and anything else stay text-coded.
"""

from __future__ import annotations

from dataclasses import dataclass

# The label of a cell the model rejected (no class): reported, counted in no class and in no alert.
UNKNOWN = "unknown"


def caption(label: str, confidence: float) -> str:
    """A cell's call as a screen shows it: "neutrophil 97%". An unknown cell gets no percentage: the
    confidence is the model's in a class it then rejected, so "unknown 100%" would read as "100 %
    unknown" (issue 23)."""
    return UNKNOWN if label == UNKNOWN else f"{label} {confidence:.0%}"


@dataclass(frozen=True)
class Loinc:
    code: str
    display: str
    unit: str  # UCUM code of the value
    unit_display: str


@dataclass(frozen=True)
class CellClass:
    label: str
    display: str
    white_cell: bool = True  # False: counted per 100 white cells, outside the differential's 100 %
    loinc: Loinc | None = None
    blast: bool = False  # a blast: what a false blast is (a normal cell called this without a flag)


def _pct(code: str, cell: str, method: str = " by Automated count") -> Loinc:
    return Loinc(code, f"{cell}/100 leukocytes in Blood{method}", "%", "%")


_KNOWN = [
    CellClass("seg_neutrophil", "Neutrophil (segmented)", loinc=_pct("770-8", "Neutrophils")),
    CellClass("neutrophil", "Neutrophil", loinc=_pct("770-8", "Neutrophils")),
    CellClass("lymphocyte", "Lymphocyte", loinc=_pct("736-9", "Lymphocytes")),
    CellClass("monocyte", "Monocyte", loinc=_pct("5905-5", "Monocytes")),
    CellClass("eosinophil", "Eosinophil", loinc=_pct("713-8", "Eosinophils")),
    CellClass("basophil", "Basophil", loinc=_pct("706-2", "Basophils")),
    CellClass("myeloblast", "Blast (myeloblast)", loinc=_pct("26446-5", "Blasts", method=""), blast=True),
    CellClass("blast", "Blast", loinc=_pct("26446-5", "Blasts", method=""), blast=True),
    CellClass("ig", "Immature granulocyte"),
    CellClass(
        "erythroblast",
        "Erythroblast (nucleated red cell)",
        white_cell=False,
        loinc=Loinc(
            "58413-6",
            "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count",
            "/100{WBCs}",
            "/100 WBC",
        ),
    ),
    CellClass("platelet", "Platelet", white_cell=False),
]
CATALOGUE = {c.label: c for c in _KNOWN}


def cell_class(label: str) -> CellClass:
    """The catalogue's entry for `label`, or a plain white-cell class named after it."""
    known = CATALOGUE.get(label)
    if known:
        return known
    return CellClass(label, label.replace("_", " ").capitalize())
