"""One slide (a session of results.db) as the report and the FHIR bundle see it: its times and model,
every cell with its model and verified label, the differential with 95 % intervals, the alert rules
and the flagged cells' crops.

"Verified" and "reviewed N of M" are edge/results/verification.py's: the cells a technician decided.
"After review" is each cell's label with the decisions applied: the technician's where a cell was
decided, the model's otherwise. Cells labelled unknown (model or reviewer) are reported but not
counted. Percentages are of the white cells counted; classes that are not white cells (erythroblasts)
are given per 100 white cells, as labs report nucleated red cells.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.catalogue import UNKNOWN, CellClass, cell_class
from edge.daemon.archive import crop_stem
from edge.daemon.config import AlertRule, DifferentialConfig
from edge.daemon.differential import DifferentialCount, wilson_interval
from edge.errors import EdgeError
from edge.results.reviews import REASONS, QueuedCell, ReviewBook, SignState
from edge.results.store import SessionCounts
from edge.results.verification import Verification


class SlideError(EdgeError):
    exit_code = 2


@dataclass
class Cell(QueuedCell):
    """A cell of the slide: the queue's view of it plus its archived crop."""

    crop: Path | None = None  # the archived JPEG, when the cell was flagged and archived


@dataclass
class Fraction:
    """n cells of a class out of `of`: as a percentage with its 95 % Wilson interval."""

    n: int
    of: int

    @property
    def percent(self) -> float:
        return 100 * self.n / self.of if self.of else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        low, high = wilson_interval(self.n, self.of)
        return 100 * low, 100 * high


@dataclass
class ClassRow:
    cls: CellClass
    model: Fraction
    verified: Fraction

    @property
    def per_100_white(self) -> bool:
        return not self.cls.white_cell


@dataclass
class AlertRow:
    name: str
    classes: list[str]
    min_fraction: float
    min_cells: int
    model_fraction: float
    model_active: bool
    verified_fraction: float
    verified_active: bool


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
    count_uncertain: bool = True
    alert_rules: list[AlertRule] = field(default_factory=list)

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

    def counts(self, verified: bool) -> Counter:
        """Cells per label counted in the differential (unknown never is)."""
        out: Counter = Counter()
        for c in self.cells:
            if verified:
                # a reviewed uncertain cell is decided; an unreviewed one counts as the config says
                if c.review is None and c.uncertain and not self.count_uncertain:
                    continue
                label = c.verified_label
            else:
                if c.uncertain and not self.count_uncertain:
                    continue
                label = c.label
            if label != UNKNOWN:
                out[label] += 1
        return out

    def white_cells(self, verified: bool) -> int:
        return sum(n for label, n in self.counts(verified).items() if cell_class(label).white_cell)

    def rows(self) -> list[ClassRow]:
        """One row per class the model or a reviewer used, white cells first, most frequent first."""
        model, verified = self.counts(False), self.counts(True)
        wm, wv = self.white_cells(False), self.white_cells(True)
        labels = [lbl for lbl in self.labels if lbl != UNKNOWN]
        labels += sorted((set(model) | set(verified)) - set(labels))
        rows = [
            ClassRow(cell_class(lbl), Fraction(model[lbl], wm), Fraction(verified[lbl], wv)) for lbl in labels
        ]
        return sorted(rows, key=lambda r: (not r.cls.white_cell, -r.verified.n, -r.model.n, r.cls.label))

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

    def _session_counts(self, verified: bool) -> SessionCounts:
        """As the daemon counts: every known label, and apart the confident ones, which alone move an
        alert (after review, a reviewed cell is decided, so it counts as confident)."""
        confident: Counter = Counter()
        for c in self.cells:
            label = c.verified_label if verified else c.label
            sure = not c.uncertain or (verified and c.review is not None)
            if sure and label != UNKNOWN:
                confident[label] += 1
        unknown = self.unknown[1 if verified else 0]
        return SessionCounts(dict(self.counts(verified)), dict(confident), self.uncertain, unknown)

    def alerts(self) -> list[AlertRow]:
        """The session's alert rules on the model's and on the verified counts, by the daemon's rule:
        a fraction of confident, known cells, once there are `min_cells` of them."""
        config = DifferentialConfig(count_uncertain=self.count_uncertain, alerts=self.alert_rules)
        results = []
        for verified in (False, True):
            count = DifferentialCount(config, self.labels)
            count.restore(self._session_counts(verified))
            results.append(count.alerts())
        return [
            AlertRow(
                m.name, m.classes, m.min_fraction, m.min_cells, m.fraction, m.active, v.fraction, v.active
            )
            for m, v in zip(*results, strict=True)
        ]


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
        )
    finally:
        book.close()
