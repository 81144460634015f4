"""One slide (a session of results.db) as the report and the FHIR bundle see it: its times, model and
microscope, every cell with its model and verified label, the differential with 95 % intervals, the
alert rules and the flagged cells' crops.

Every figure is the daemon's: the slide's cells are counted, in the order they were recorded, by the
same DifferentialCount the page and MQTT read (edge/daemon/differential.py defines the white cells
counted, each class's percentage and the blast fraction), so the report and FHIR give the numbers
the page gave. "After review" is each cell's label with the decisions applied: the technician's where
a cell was decided, the model's otherwise; a decided cell counts even if the model was unsure, and the
"after review" figures (ClassRow.verified, AlertRow.verified) are that DifferentialCount. "Verified"
and "reviewed N of M" are edge/results/verification.py's: the cells a technician decided (none before a
review; Slide.verification). On a microscope the gate found different (`site`), the alerts are
withheld on both.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.catalogue import UNKNOWN, CellClass, cell_class
from edge.daemon.archive import crop_stem
from edge.daemon.config import AlertRule, DifferentialConfig
from edge.daemon.differential import AlertState, DifferentialCount, Fraction, base_words
from edge.errors import EdgeError
from edge.results.reviews import REASONS, QueuedCell, ReviewBook, SignState
from edge.results.verification import Verification
from edge.site import ALERT_WITHHELD, SiteState


class SlideError(EdgeError):
    exit_code = 2


@dataclass
class Cell(QueuedCell):
    """A cell of the slide: the queue's view of it plus its archived crop."""

    crop: Path | None = None  # the archived JPEG, when the cell was flagged and archived


@dataclass
class ClassRow:
    cls: CellClass
    model: Fraction
    verified: Fraction

    @property
    def per_100_white(self) -> bool:
        return not self.cls.white_cell


@dataclass(frozen=True)
class AlertRow:
    """A rule on the model's and on the verified counts, each the daemon's AlertState (whose `name` and
    `classes`, the rule's, are the same on both)."""

    model: AlertState
    verified: AlertState


@dataclass
class Slide:
    session_id: str
    started: float
    ended: float | None
    host: str
    source: str
    bundle: str  # the bundle directory the daemon loaded
    model_sha: str
    labels: list[str]
    alert_classes: list[str]
    cells: list[Cell]
    sign: SignState
    archive: Path
    count_uncertain: bool = False
    alert_rules: list[AlertRule] = field(default_factory=list)
    site: SiteState | None = None  # the microscope as the daemon recorded it (None: not recorded)

    # -- what the report shows ----------------------------------------------------------------
    @property
    def bundle_name(self) -> str:
        return Path(self.bundle).name or self.bundle

    @property
    def flagged(self) -> list[Cell]:
        order = {r: i for i, r in enumerate(REASONS)}
        return sorted(
            (c for c in self.cells if c.reason), key=lambda c: (order[c.reason], c.confidence, c.id)
        )

    @property
    def differs(self) -> bool:
        """The gate found this microscope's cells unlike the bundle's: no blast figure is a result."""
        return self.site is not None and self.site.differs

    @property
    def base(self) -> str:
        """What the white cells counted are, in words (edge/daemon/differential.py base_words)."""
        return base_words(self.count_uncertain)

    def differential(self, verified: bool) -> DifferentialCount:
        """The slide counted as the daemon counts it: the model's labels, or the verified ones (a
        reviewed cell is decided, so it is not uncertain any more)."""
        config = DifferentialConfig(count_uncertain=self.count_uncertain, alerts=self.alert_rules)
        named = dict.fromkeys([*self.labels, *(c.verified_label for c in self.cells)])
        labels = [n for n in named if n != UNKNOWN]
        count = DifferentialCount(config, labels, [n for n in labels if cell_class(n).white_cell])
        for c in self.cells:
            if verified:
                count.add(c.verified_label, c.uncertain and c.review is None)
            else:
                count.add(c.label, c.uncertain)
        if self.differs:
            count.withhold(ALERT_WITHHELD)
        return count

    def counts(self, verified: bool) -> Counter:
        """Cells per label counted in the differential (unknown never is)."""
        return Counter({k: v for k, v in self.differential(verified).counts.items() if v})

    def white_cells(self, verified: bool) -> int:
        return self.differential(verified).total

    def rows(self) -> list[ClassRow]:
        """One row per class the model or a reviewer used, white cells first, most frequent first."""
        model, verified = self.differential(False), self.differential(True)
        labels = [lbl for lbl in self.labels if lbl != UNKNOWN]
        labels += sorted((set(model.counts) | set(verified.counts)) - set(labels) - {UNKNOWN})
        rows = [
            ClassRow(
                cell_class(lbl),
                Fraction(model.counts[lbl], model.total),
                Fraction(verified.counts[lbl], verified.total),
            )
            for lbl in labels
        ]
        return sorted(rows, key=lambda r: (not r.cls.white_cell, -r.verified.n, -r.model.n, r.cls.label))

    def withheld(self, row: ClassRow) -> bool:
        """A class whose figure is not a result: one an alert rule watches, on a microscope that differs."""
        return self.differs and any(row.cls.label in rule.classes for rule in self.alert_rules)

    @property
    def unknown(self) -> tuple[int, int]:
        """Cells labelled unknown by the model, and after review."""
        return (
            sum(c.label == UNKNOWN for c in self.cells),
            sum(c.verified_label == UNKNOWN for c in self.cells),
        )

    @property
    def uncertain(self) -> int:
        return sum(c.uncertain for c in self.cells)

    @property
    def verification(self) -> Verification:
        """What a technician decided: verified per label, reviewed N of M (the one definition)."""
        return Verification.of(self.cells)

    @property
    def reviewed(self) -> tuple[int, int]:
        """Cells decided as the model said (confirmed) and otherwise (reclassified)."""
        done = [c for c in self.cells if c.review]
        return sum(c.review.label == c.label for c in done), sum(c.review.label != c.label for c in done)

    def alerts(self) -> list[AlertRow]:
        """The session's alert rules on the model's and on the verified counts, by the daemon's rule."""
        model, verified = self.differential(False).alerts(), self.differential(True).alerts()
        return [AlertRow(m, v) for m, v in zip(model, verified, strict=True)]


def iso(ts: float | None) -> str:
    """A UTC time as a lab reads it (and as FHIR takes it)."""
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def archive_root(db: Path, config: dict, override: Path | None = None) -> Path:
    """Where the daemon archived this session's flagged cells: `override`, the config's archive.dir
    (absolute, or relative to where the daemon ran or to the database), or flagged/ beside the db."""
    if override is not None:
        return Path(override)
    configured = (config.get("archive") or {}).get("dir") or ""
    if not configured:
        return db.resolve().parent / "flagged"
    path = Path(configured)
    if path.is_absolute():
        return path
    for candidate in (path, db.resolve().parent / path):
        if candidate.is_dir():
            return candidate
    return path


def pick_session(db: Path, session_id: str | None) -> str:
    """The session asked for, or the only one in the database."""
    book = ReviewBook.existing(db)
    try:
        ids = book.session_ids()
    finally:
        book.close()
    if session_id:
        if session_id not in ids:
            latest = ", ".join(ids[:5]) or "none"
            raise SlideError(f"{db}: no session {session_id!r} (latest: {latest})")
        return session_id
    if len(ids) != 1:
        raise SlideError(f"{db}: {len(ids)} sessions; name one with --session ({', '.join(ids[:5])})")
    return ids[0]


def load_slide(db: str | Path, session_id: str, archive: Path | None = None) -> Slide:
    db = Path(db)
    # A results.db from before reviews existed gains the (empty) reviews and signoffs tables.
    book = ReviewBook.existing(db)
    try:
        s = book.session(session_id)
        alert_classes = s.alert_classes
        differential = s.config.get("differential") or {}
        rules = [AlertRule(**r) for r in differential.get("alerts") or []]
        root = archive_root(db, s.config, archive)
        record = book.site(session_id)
        site = SiteState.from_record(record) if record is not None else None
        decided, hasty = book.reviews_of(session_id)
        cells = []
        for r in book.cells(session_id):
            crop = root / session_id / (crop_stem(r["frame_id"], r["crop_index"], r["label"]) + ".jpg")
            cells.append(
                Cell.from_row(r, decided, alert_classes, hasty, crop=crop if crop.is_file() else None)
            )
        return Slide(
            session_id=session_id,
            started=s.started,
            ended=s.ended,
            host=s.host,
            source=s.source,
            bundle=s.bundle,
            model_sha=s.model_sha,
            labels=book.model_labels(session_id),
            alert_classes=alert_classes,
            cells=cells,
            sign=book.sign_state(session_id),
            archive=root,
            count_uncertain=bool(differential.get("count_uncertain", True)),
            alert_rules=rules,
            site=site,
        )
    finally:
        book.close()
