"""A microscope is a site: the gate that notices an unknown one, and the state every screen shows.

Clinical analysers validate each site before they report; so does this project (docs/site.md). A
bundle is uncalibrated (it knows the microscopes it was trained on) or calibrated to one microscope
(`manifest.site`, written by `edge adapt`). Either way its `gate` says how its known cells score:
from the first white cells of a session (or of a folder in `edge eval` / `edge classify`), the median
rejection score is compared at a few checkpoints with limits set at quantization on held-out cells.
Above a limit the microscope "differs": every cell is flagged for review ("uncalibrated microscope"),
the blast alert does not fire and says why, and the report carries no blast percentage as a result.
After the last checkpoint below every limit it "matches". The gate never reads a cell the model
called a blast (gate_score): blasts lie further from the training cells than most, so a slide full of
them on a known microscope looked "different" in 5 of 100 batches of 50 myeloblasts when they counted,
and the alert would have been withheld. A slide of blasts alone keeps checking and its alert fires;
a microscope that differs is told by its other cells (tests/test_site.py checks both).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edge.catalogue import cell_class
from edge.manifest import Checkpoint, Gate
from edge.results.sites import SiteRecord
from edge.scale import measure_files

CHECKPOINTS = (20, 30, 40, 50)
FALSE_ALARM = 0.01  # of batches of known cells called "differs", over all checkpoints together
UNCALIBRATED_REASON = "uncalibrated microscope"
# Why no alert fires on a microscope that differs (edge/daemon/differential.py AlertState.withheld).
ALERT_WITHHELD = "microscope not calibrated"

CHECKING, MATCHES, DIFFERS, UNAVAILABLE = "checking", "matches", "differs", "unavailable"


def gate_score(label: str, rejection_score: float | None) -> float | None:
    """What the gate reads of a cell: its rejection score, or None (skipped) for a cell the model
    called a blast, so that blasts can never make a known microscope look unknown."""
    return None if cell_class(label).blast else rejection_score


def gate_scores(labels, scores) -> np.ndarray:
    """What the gate reads of these cells (labels as the model called them): the scores of those not
    called a blast. The gate's limits are set on such cells, as the gate reads them."""
    read = [gate_score(label, s) for label, s in zip(labels, scores, strict=True)]
    return np.array([s for s in read if s is not None], np.float64)


def _batch_medians(scores: np.ndarray, cells: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    picks = np.stack([rng.choice(len(scores), cells, replace=False) for _ in range(reps)])
    return np.median(scores[picks], axis=1)


def gate_limits(
    scores: np.ndarray,
    reference: str,
    checkpoints=CHECKPOINTS,
    false_alarm: float = FALSE_ALARM,
    reps: int = 4000,
    seed: int = 0,
) -> Gate:
    """The gate for cells that score like `scores` (held-out cells the bundle knows): each
    checkpoint's limit is the quantile 1 - false_alarm / len(checkpoints) of the median of that many
    cells drawn at random, so batches of known cells are called different at most `false_alarm` of
    the time over the whole check (a Bonferroni bound; `measure_false_alarm` gives the real rate)."""
    scores = np.asarray(scores, np.float64)
    usable = [c for c in checkpoints if c < len(scores)]
    if not usable:
        raise ValueError(f"the gate needs more than {checkpoints[0]} reference cells, got {len(scores)}")
    rng = np.random.default_rng(seed)
    q = 1.0 - false_alarm / len(usable)
    limits = [
        Checkpoint(cells=c, limit=round(float(np.quantile(_batch_medians(scores, c, reps, rng), q)), 4))
        for c in usable
    ]
    return Gate(checkpoints=limits, reference=reference, false_alarm=false_alarm)


def measure_false_alarm(gate: Gate, scores: np.ndarray, reps: int = 2000, seed: int = 1) -> float:
    """The share of random batches of `scores` (in random order) that `gate` calls different."""
    rng = np.random.default_rng(seed)
    scores = np.asarray(scores, np.float64)
    n = min(gate.cells, len(scores))
    differs = 0
    for _ in range(reps):
        watch = GateWatch(gate)
        for s in scores[rng.choice(len(scores), n, replace=False)]:
            watch.add(float(s))
        differs += watch.decision == DIFFERS
    return differs / reps


@dataclass
class GateWatch:
    """The running decision for one session or folder: add each cell's gate_score in order."""

    gate: Gate | None
    scores: list[float] = field(default_factory=list)
    decision: str = CHECKING
    decided_at: int | None = None  # cells seen when it decided
    median: float | None = None
    before: int = 0  # cells checked in an earlier run of the same session (resume)

    def __post_init__(self):
        if self.gate is None:
            self.decision = UNAVAILABLE

    def resume(self, decision: str, cells_checked: int, decided_at: int | None, median: float | None) -> None:
        """A continued session keeps the decision its earlier run made (the same slide, the same
        microscope); one still checking starts its check again."""
        if self.gate is None or decision not in (MATCHES, DIFFERS):
            return
        self.decision, self.decided_at, self.median, self.before = decision, decided_at, median, cells_checked

    def add(self, score: float | None) -> str:
        """One more cell; returns the decision (it changes at most once)."""
        if self.decision != CHECKING or score is None:
            return self.decision
        self.scores.append(float(score))
        n = len(self.scores)
        for checkpoint in self.gate.checkpoints:
            if n == checkpoint.cells:
                self.median = float(np.median(self.scores))
                if self.median > checkpoint.limit:
                    self.decision, self.decided_at = DIFFERS, n
                elif n == self.gate.cells:
                    self.decision, self.decided_at = MATCHES, n
        return self.decision

    @property
    def cells_checked(self) -> int:
        return self.before + len(self.scores)

    @property
    def differs(self) -> bool:
        return self.decision == DIFFERS


@dataclass(frozen=True)
class SiteState:
    """What every screen says about the microscope: the page header, /api/status, the summary JSON's
    "site", the report, FHIR (Device and DiagnosticReport) and MQTT status render this one object."""

    calibrated: bool
    name: str | None  # the calibrated site's name
    calibrated_at: str | None
    scale_rbc_px: float | None  # the red-cell diameter used to cut cells, pixels
    scale_source: str | None  # "site", "measured", None (unknown: whole image / detector box)
    matches_bundle: bool | None  # None while checking, or when the bundle has no gate
    decision: str
    cells_checked: int
    held_back_accuracy: float | None = None
    decided_at: int | None = None  # cells seen when the gate decided
    median_score: float | None = None  # the gate's statistic when it last looked

    @property
    def differs(self) -> bool:
        return self.decision == DIFFERS

    def to_dict(self) -> dict:
        return {
            "calibrated": self.calibrated,
            "name": self.name,
            "calibrated_at": self.calibrated_at,
            "scale_rbc_px": self.scale_rbc_px,
            "scale_source": self.scale_source,
            "matches_bundle": self.matches_bundle,
            "decision": self.decision,
            "cells_checked": self.cells_checked,
            "held_back_accuracy": self.held_back_accuracy,
            "decided_at": self.decided_at,
            "median_score": self.median_score,
        }

    def to_record(self, model_sha: str) -> SiteRecord:
        """As results.db keeps it (edge/results/sites.py)."""
        d = self.to_dict()
        del d["matches_bundle"]
        return SiteRecord(model_sha=model_sha, **d)

    @classmethod
    def from_record(cls, record: SiteRecord) -> SiteState:
        """A recorded session's state, for the report and FHIR."""
        d = {k: v for k, v in asdict(record).items() if k != "model_sha"}
        matches = None if record.decision in (CHECKING, UNAVAILABLE) else record.decision == MATCHES
        return cls(matches_bundle=matches, **d)

    @property
    def microscope(self) -> str:
        """The microscope in a few words, as the page header, the report and FHIR's Device say it."""
        if self.calibrated:
            when = f", calibrated {self.calibrated_at}" if self.calibrated_at else ""
            accuracy = (
                f", {100 * self.held_back_accuracy:.1f} % on held-back cells"
                if self.held_back_accuracy is not None
                else ""
            )
            return f"site {self.name}{when}{accuracy}"
        return "not calibrated (the training labs' microscopes)"

    @property
    def check(self) -> str:
        """The gate's state in a few words."""
        return {
            DIFFERS: f"differs from the bundle's cells (checked on {self.cells_checked} cells)",
            MATCHES: f"matches the bundle's cells (checked on {self.cells_checked} cells)",
            CHECKING: f"checking ({self.cells_checked} cells so far)",
        }.get(self.decision, "not checked (the bundle has no gate)")

    @property
    def scale(self) -> str:
        if not self.scale_rbc_px:
            return "not measured"
        return f"red cells {self.scale_rbc_px:g} px across ({self.scale_source})"

    @property
    def banner(self) -> str | None:
        """The one line a technician must read, or None when there is nothing to say."""
        if self.decision == DIFFERS:
            where = (
                f"the {self.name} calibration"
                if self.calibrated
                else "the microscopes this model was trained on"
            )
            return (
                f"This microscope's cells do not look like {where} (checked on {self.cells_checked} cells): "
                "every cell needs review and no blast alert is given. Calibrate it: label 20 cells of each "
                "class, then `edge adapt` (docs/site.md)."
            )
        if not self.calibrated:
            return "Microscope not calibrated: results hold for the training labs' microscopes only (docs/site.md)."
        return None


def site_state(manifest, watch: GateWatch, scale_rbc_px: float | None, scale_source: str | None) -> SiteState:
    site = manifest.site
    matches = None if watch.decision in (CHECKING, UNAVAILABLE) else watch.decision == MATCHES
    accuracy = (site.held_back or {}).get("accuracy_after") if site else None
    return SiteState(
        calibrated=site is not None,
        name=site.name if site else None,
        calibrated_at=site.calibrated_at if site else None,
        scale_rbc_px=scale_rbc_px,
        scale_source=scale_source,
        matches_bundle=matches,
        decision=watch.decision,
        cells_checked=watch.cells_checked,
        held_back_accuracy=accuracy,
        decided_at=watch.decided_at,
        median_score=None if watch.median is None else round(watch.median, 4),
    )


def folder_scale(bundle, files: list, given: float | None = None) -> tuple[float | None, str | None, str]:
    """The scale one folder of single-cell images is cut at, where it came from, and the line that
    says so: `given` (--rbc-px), the calibrated site's, or measured on the folder's red cells. None
    when the bundle does not cut at a physical size, or nothing could be measured (whole images)."""
    spec = bundle.manifest.preprocess
    if not (spec.version == 2 and spec.field_rbc):
        return None, None, ""
    if given:
        return float(given), "given", f"scale: red cells {given:g} px across (given)"
    site = bundle.manifest.site
    if site is not None and site.scale is not None:
        return (
            site.scale.rbc_px,
            "site",
            f"scale: red cells {site.scale.rbc_px:g} px across (site {site.name})",
        )
    found = measure_files(files)
    if found is None:
        return (
            None,
            None,
            ("scale: too few red cells to measure; whole images used (give it with --rbc-px, or calibrate)"),
        )
    return (
        found.rbc_px,
        "measured",
        (
            f"scale: red cells {found.rbc_px:g} px across (measured on {found.cells} red cells in {found.images} images)"
        ),
    )


def gated(results, watch: GateWatch):
    """Results (objects with `.prediction`) in order, with the gate applied as the daemon applies it:
    held back until the gate decides (or the results end), and every cell flagged for review when
    the microscope differs. So `edge eval` and `edge classify` tell a folder what `edge run` would."""
    held = []
    for result in results:
        if result.prediction is not None:
            watch.add(gate_score(result.prediction.label, result.prediction.rejection_score))
        if watch.decision == CHECKING:
            held.append(result)
            continue
        for r in (*held, result):
            if watch.differs and r.prediction is not None:
                r.prediction.flag_uncalibrated(UNCALIBRATED_REASON)
            yield r
        held = []
    yield from held


def decision_line(
    decision: str,
    calibrated: bool,
    site: str | None = None,
    median_score: float | None = None,
    cells_checked: int = 0,
    **_,
) -> str:
    """The gate's decision for a folder in one line, as the daemon's banner gives it."""
    where = f"site {site}" if calibrated else "the training labs' microscopes"
    if decision == DIFFERS:
        return (
            f"microscope: DIFFERS from {where} (median rejection score {median_score:.1f} of the first "
            f"{cells_checked} cells): every cell flagged '{UNCALIBRATED_REASON}'; calibrate it (edge adapt)"
        )
    if decision == MATCHES:
        return f"microscope: matches {where} (checked on the first {cells_checked} cells)"
    if decision == CHECKING:
        return f"microscope: not decided ({cells_checked} cells; the gate needs more)"
    return "microscope: not checked (this bundle has no gate)"
