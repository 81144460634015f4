"""Reviews and sign-off of a slide, kept in results.db beside the model's rows (tables in schema.py).

- A review is a technician's label for one cell (`results.id`): the model's label again (confirmed) or
  another one (reclassified), with the reviewer's name, the time, and how long the cell was shown
  before the decision. Reviews are appended, never written into `results`. A review taken faster than
  a person can look at a cell is kept but decides nothing (edge/results/verification.py defines
  "decided", "verified" and "reviewed N of M"); a cell's latest decision is its verified label.
- The review queue is every cell that needs a look: an alert class (e.g. myeloblast), unknown (the
  model rejected it), or uncertain. A slide is signed only when every queued cell is decided.
- Signing records who and when, and covers the session's cells up to that moment. While it stands,
  reviews are refused; `reopen` (also recorded, with who, when and why) lets them in again, and the
  slide has to be signed again. A live slide that gains cells after its signature is no longer signed;
  the first change after that (a review, a signature) records the re-opening it amounts to, with why.

Queries name their columns: other work adds columns to `results`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.catalogue import UNKNOWN
from edge.results.schema import ResultsError
from edge.results.sessions import ResultsReader
from edge.results.verification import NAME_MAX, REASON_MAX, Verification, clean_text, too_fast

# Queue order: what matters most first.
REASONS = ("alert_class", "unknown", "uncertain")
MAX_CELL_ID = 2**63 - 1  # SQLite's largest row id: a larger number names no cell


class ReviewError(ResultsError):
    """A review or sign-off that cannot be taken (signed slide, unknown cell or label...)."""


def needs_look(label: str, uncertain: bool, alert_classes) -> str | None:
    """Why a cell is in the review queue, or None."""
    if label in alert_classes:
        return "alert_class"
    if label == UNKNOWN:
        return "unknown"
    if uncertain:
        return "uncertain"
    return None


@dataclass
class Review:
    label: str
    reviewer: str
    ts: float
    seconds: float | None = None  # how long the cell was shown before the decision (None: not timed)

    @property
    def too_fast(self) -> bool:
        """Faster than a look at the cell (edge.results.verification.MIN_REVIEW_S): decides nothing."""
        return too_fast(self.seconds)

    def as_dict(self) -> dict:
        return {**asdict(self), "too_fast": self.too_fast}


@dataclass
class SignState:
    status: str  # unsigned | signed | changed (cells recorded after the signature) | reopened
    name: str = ""  # who signed (or re-opened)
    ts: float = 0.0
    cells: int = 0  # cells the signature covers
    cells_since: int = 0  # cells recorded after it
    note: str = ""

    @property
    def signed(self) -> bool:
        return self.status == "signed"


@dataclass
class QueuedCell:
    id: int
    frame_id: int
    crop_index: int
    ts: float
    label: str  # the model's
    confidence: float
    uncertain: bool
    reason: str | None  # why it needs a look (alert_class, unknown, uncertain), None if it does not
    review: Review | None  # the latest decision (a review that was not too fast)
    hasty: Review | None = None  # a too-fast review after it (or instead of one): to look at again

    @classmethod
    def from_row(cls, row, reviews: dict[int, Review], alert_classes, hasty=None, **extra):
        """A results row (id, frame_id, crop_index, ts, label, confidence, uncertain) with its latest
        decision (`reviews`) and the too-fast review after it (`hasty`)."""
        return cls(
            row["id"],
            row["frame_id"],
            row["crop_index"],
            row["ts"],
            row["label"],
            float(row["confidence"]),
            bool(row["uncertain"]),
            needs_look(row["label"], bool(row["uncertain"]), alert_classes),
            reviews.get(row["id"]),
            (hasty or {}).get(row["id"]),
            **extra,
        )

    @property
    def verified_label(self) -> str:
        """The label after review: the technician's decision where there is one, the model's otherwise."""
        return self.review.label if self.review else self.label

    def as_dict(self) -> dict:
        out = {**asdict(self), "verified_label": self.verified_label}
        out["review"] = self.review.as_dict() if self.review else None
        out["hasty"] = self.hasty.as_dict() if self.hasty else None
        return out


def _text(value, what: str, limit: int) -> str:
    try:
        return clean_text(value, what, limit)
    except ValueError as exc:
        raise ReviewError(str(exc), 400) from None


class ReviewBook(ResultsReader):
    """Reviews and sign-offs of one results.db. Its own connection, so the page's threads never
    share the pipeline's; WAL lets both write, each waiting briefly for the other. A change is one
    IMMEDIATE transaction: the slide's state it was checked against cannot change under it (another
    page, `edge review serve` beside the daemon)."""

    def __init__(self, db: str | Path):
        super().__init__(db)
        self._summaries: dict[str, tuple[float, dict]] = {}

    # -- reading ------------------------------------------------------------------------------
    def sessions(self) -> list[dict]:
        """Every session, newest first, with its cell count and sign state."""
        return [{**s, "sign": asdict(self.sign_state(s["id"]))} for s in self.cell_counts()]

    def summary(self, session_id: str, max_age_s: float = 2.0) -> dict:
        """For the live page and /api/status: sign state, the queue, and what is verified
        (edge.results.verification). Cached for `max_age_s`: the page polls; a change made through
        this book clears it."""
        now = time.monotonic()
        cached = self._summaries.get(session_id)
        if cached and now - cached[0] < max_age_s:
            return cached[1]
        v = self.verification(session_id)
        result = {
            "session_id": session_id,
            "sign": asdict(self.sign_state(session_id)),
            "queue": v.queued,
            **v.as_dict(),
            "text": v.text(),
        }
        self._summaries[session_id] = (now, result)
        return result

    def reviews_of(self, session_id: str) -> tuple[dict[int, Review], dict[int, Review]]:
        """result id -> its latest decision; and result id -> a too-fast review made after it (or
        with none before), which the page shows so that the cell is looked at again."""
        with self.lock:
            rows = self.db.execute(
                "SELECT result_id, label, reviewer, ts, seconds FROM reviews WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        decided: dict[int, Review] = {}
        hasty: dict[int, Review] = {}
        for r in rows:
            review = Review(r["label"], r["reviewer"], r["ts"], r["seconds"])
            if review.too_fast:
                hasty[r["result_id"]] = review
            else:
                decided[r["result_id"]] = review
                hasty.pop(r["result_id"], None)
        return decided, hasty

    def latest_reviews(self, session_id: str) -> dict[int, Review]:
        """result id -> its latest decision (a review that was not too fast)."""
        return self.reviews_of(session_id)[0]

    def flagged(self, session_id: str, alert_classes=None) -> list[QueuedCell]:
        """The cells that need a look, and any other cell that was reviewed, in recorded order."""
        alert_classes = list(self.alert_classes(session_id) if alert_classes is None else alert_classes)
        decided, hasty = self.reviews_of(session_id)
        rows = self.cells(session_id, flagged_by=alert_classes)
        return [QueuedCell.from_row(r, decided, alert_classes, hasty) for r in rows]

    def queue(self, session_id: str, alert_classes) -> list[QueuedCell]:
        """The cells that need a look, most important first: undecided before decided, then alert
        classes, unknown, uncertain, each from the least confident."""
        cells = [c for c in self.flagged(session_id, alert_classes) if c.reason]
        return sorted(
            cells, key=lambda c: (c.review is not None, REASONS.index(c.reason), c.confidence, c.id)
        )

    def verification(self, session_id: str, alert_classes=None) -> Verification:
        """What is verified and how much is reviewed (edge/results/verification.py)."""
        return Verification.of(self.flagged(session_id, alert_classes))

    def last_review_ts(self, session_id: str, reviewer: str) -> float | None:
        """When `reviewer` last decided a cell of the session (the server's clock), or None."""
        with self.lock:
            row = self.db.execute(
                "SELECT MAX(ts) FROM reviews WHERE session_id = ? AND reviewer = ?", (session_id, reviewer)
            ).fetchone()
        return row[0]

    def sign_state(self, session_id: str) -> SignState:
        with self.lock:
            last = self.db.execute(
                "SELECT action, name, ts, cells, last_result_id, note FROM signoffs WHERE session_id = ?"
                " ORDER BY id DESC LIMIT 1",
                (session_id,),
            ).fetchone()
            if last is None:
                return SignState("unsigned")
            if last["action"] == "reopen":
                return SignState("reopened", last["name"], last["ts"], note=last["note"])
            since = self.cells_after(session_id, last["last_result_id"])
        return SignState(
            "changed" if since else "signed", last["name"], last["ts"], last["cells"], since, last["note"]
        )

    # -- writing ------------------------------------------------------------------------------
    @contextmanager
    def _change(self, session_id: str) -> Iterator[SignState]:
        """One IMMEDIATE transaction around a change, given the slide's state as it stands."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.sign_state(session_id)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            finally:
                self._summaries.pop(session_id, None)

    def _record_voided(self, session_id: str, state: SignState, who: str) -> None:
        """A signature that new cells voided: the first change after it records the re-opening."""
        if state.status == "changed":
            note = (
                f"{state.cells_since} cell(s) recorded after {state.name} signed: "
                f"the signature no longer covers the slide"
            )
            self._signoff(session_id, "reopen", who, note=note)

    def _signoff(self, session_id: str, action: str, name: str, cells=0, last_id=0, note="") -> None:
        self.db.execute(
            "INSERT INTO signoffs(session_id, action, name, ts, cells, last_result_id, note)"
            " VALUES (?,?,?,?,?,?,?)",
            (session_id, action, name, time.time(), cells, last_id, note),
        )

    def review(
        self, session_id: str, result_id: int, label: str, reviewer: str, labels, seconds: float | None = None
    ) -> Review:
        """Record `reviewer`'s label for one cell. `labels`: what a reviewer may choose (the model's
        labels and 'unknown'); `seconds`: how long the cell was shown (None: not timed). A review
        faster than MIN_REVIEW_S is recorded and returned with `too_fast`, and decides nothing."""
        reviewer = _text(reviewer, "reviewer", NAME_MAX)
        if not isinstance(label, str) or label not in labels:
            raise ReviewError(f"label {label!r} is not one of {', '.join(labels)}", 400)
        if isinstance(result_id, bool) or not isinstance(result_id, int) or not 0 < result_id <= MAX_CELL_ID:
            raise ReviewError(f"cell {result_id!r} is not a cell of session {session_id}", 404)
        with self._change(session_id) as state:
            if state.signed:
                raise ReviewError(
                    f"session {session_id} was signed by {state.name}; reopen it before changing a review"
                )
            if self.session_of_cell(result_id) != session_id:
                raise ReviewError(f"cell {result_id} is not a cell of session {session_id}", 404)
            self._record_voided(session_id, state, reviewer)
            now = time.time()
            self.db.execute(
                "INSERT INTO reviews(result_id, session_id, label, reviewer, ts, seconds) VALUES (?,?,?,?,?,?)",
                (result_id, session_id, label, reviewer, now, seconds),
            )
        return Review(label, reviewer, now, seconds)

    def sign(self, session_id: str, name: str, alert_classes) -> SignState:
        """Sign the slide: refused while a queued cell is undecided or the slide is already signed."""
        name = _text(name, "signer", NAME_MAX)
        self.session(session_id)
        with self._change(session_id) as state:
            if state.signed:
                raise ReviewError(f"session {session_id} is already signed by {state.name}")
            v = self.verification(session_id, alert_classes)
            if v.pending:
                fast = f" ({v.too_fast} decided too fast: look at them again)" if v.too_fast else ""
                raise ReviewError(
                    f"{v.pending} cell(s) in the review queue of {session_id} are not reviewed yet{fast}"
                )
            self._record_voided(session_id, state, name)
            cells, last_id = self.db.execute(
                "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM results WHERE session_id = ?", (session_id,)
            ).fetchone()
            self._signoff(session_id, "sign", name, cells, last_id)
        return self.sign_state(session_id)

    def reopen(self, session_id: str, name: str, note: str) -> SignState:
        """Undo a signature so that reviews can change again; who, when and why (required) are kept."""
        name = _text(name, "reviewer", NAME_MAX)
        note = _text(note, "reason", REASON_MAX)
        with self._change(session_id) as state:
            if state.status not in ("signed", "changed"):
                raise ReviewError(f"session {session_id} is not signed")
            self._signoff(session_id, "reopen", name, note=note)
        return self.sign_state(session_id)
