"""Reviews and sign-off of a slide, kept in results.db beside the model's rows (tables in schema.py).

- A review is a technician's label for one cell (`results.id`): the model's label again (confirmed) or
  another one (reclassified), with the reviewer's name and the time. Reviews are appended, never
  written into `results`; the latest review of a cell is its verified label.
- The review queue is every cell that needs a look: an alert class (e.g. myeloblast), unknown (the
  model rejected it), or uncertain. A slide is signed only when every queued cell has been reviewed.
- Signing records who and when, and covers the session's cells up to that moment. While it stands,
  reviews are refused; `reopen` (also recorded, with who, when and why) lets them in again, and the
  slide has to be signed again. A live slide that gains cells after its signature is no longer signed.

Queries name their columns: other work adds columns to `results`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.catalogue import UNKNOWN
from edge.results.schema import ResultsError
from edge.results.sessions import ResultsReader

# Queue order: what matters most first.
REASONS = ("alert_class", "unknown", "uncertain")


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
    review: Review | None

    @classmethod
    def from_row(cls, row, reviews: dict[int, Review], alert_classes, **extra):
        """A results row (id, frame_id, crop_index, ts, label, confidence, uncertain) with its latest review."""
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
            **extra,
        )

    @property
    def verified_label(self) -> str:
        return self.review.label if self.review else self.label

    def as_dict(self) -> dict:
        return {**asdict(self), "verified_label": self.verified_label}


def _clean_name(name: str, what: str) -> str:
    name = " ".join(str(name or "").split())
    if not name:
        raise ReviewError(f"{what}: a name is needed", 400)
    if len(name) > 80:
        raise ReviewError(f"{what}: at most 80 characters", 400)
    return name


class ReviewBook(ResultsReader):
    """Reviews and sign-offs of one results.db. Its own connection, so the page's threads never
    share the pipeline's; WAL lets both write, each waiting briefly for the other."""

    def __init__(self, db: str | Path):
        super().__init__(db)
        self._summaries: dict[str, tuple[float, dict]] = {}

    # -- reading ------------------------------------------------------------------------------
    def sessions(self) -> list[dict]:
        """Every session, newest first, with its cell count and sign state."""
        return [{**s, "sign": asdict(self.sign_state(s["id"]))} for s in self.cell_counts()]

    def summary(
        self, session_id: str, model_counts: dict, count_uncertain: bool = True, max_age_s: float = 2.0
    ) -> dict:
        """For the live page: sign state, queue size, cells still to review, and the verified count per
        label (the model's counts with the reviews applied). Cached for `max_age_s`: the page polls."""
        now = time.monotonic()
        cached = self._summaries.get(session_id)
        if cached and now - cached[0] < max_age_s:
            return cached[1]
        queue = self.queue(session_id, self.alert_classes(session_id))
        delta = self.verified_delta(session_id, count_uncertain)
        verified = {k: v + delta.get(k, 0) for k, v in model_counts.items()}
        verified.update({k: v for k, v in delta.items() if k not in verified and v > 0})
        result = {
            "session_id": session_id,
            "sign": asdict(self.sign_state(session_id)),
            "queue": len(queue),
            "pending": sum(c.review is None for c in queue),
            "verified": verified,
        }
        self._summaries[session_id] = (now, result)
        return result

    def latest_reviews(self, session_id: str) -> dict[int, Review]:
        """result id -> its latest review."""
        with self.lock:
            rows = self.db.execute(
                "SELECT result_id, label, reviewer, ts FROM reviews WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        return {r["result_id"]: Review(r["label"], r["reviewer"], r["ts"]) for r in rows}

    def queue(self, session_id: str, alert_classes) -> list[QueuedCell]:
        """The cells that need a look, most important first: unreviewed before reviewed, then alert
        classes, unknown, uncertain, each from the least confident."""
        alert_classes = list(alert_classes)
        rows = self.cells(session_id, flagged_by=alert_classes)
        reviews = self.latest_reviews(session_id)
        cells = [QueuedCell.from_row(r, reviews, alert_classes) for r in rows]
        return sorted(
            cells, key=lambda c: (c.review is not None, REASONS.index(c.reason), c.confidence, c.id)
        )

    def verified_delta(self, session_id: str, count_uncertain: bool = True) -> Counter:
        """What the reviews change in the model's per-label counts: -1 for the model's label, +1 for
        the reviewer's (an 'unknown' review leaves the count). With count_uncertain off, the model
        did not count uncertain cells, and a reviewed one is counted now that a person decided it."""
        with self.lock:
            rows = self.db.execute(
                "SELECT r.label AS model, r.uncertain AS uncertain, v.label AS verified FROM reviews v"
                " JOIN results r ON r.id = v.result_id"
                " WHERE v.id IN (SELECT MAX(id) FROM reviews WHERE session_id = ? GROUP BY result_id)",
                (session_id,),
            ).fetchall()
        delta: Counter = Counter()
        for r in rows:
            if count_uncertain or not r["uncertain"]:
                delta[r["model"]] -= 1
            if r["verified"] != UNKNOWN:
                delta[r["verified"]] += 1
        return delta

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
    def review(self, session_id: str, result_id: int, label: str, reviewer: str, labels) -> Review:
        """Record `reviewer`'s label for one cell. `labels`: what a reviewer may choose (the model's
        labels and 'unknown')."""
        reviewer = _clean_name(reviewer, "reviewer")
        if label not in labels:
            raise ReviewError(f"label {label!r} is not one of {', '.join(labels)}", 400)
        state = self.sign_state(session_id)
        if state.signed:
            raise ReviewError(
                f"session {session_id} was signed by {state.name}; reopen it before changing a review"
            )
        with self.lock:
            if self.session_of_cell(result_id) != session_id:
                raise ReviewError(f"cell {result_id} is not a cell of session {session_id}", 404)
            now = time.time()
            self.db.execute(
                "INSERT INTO reviews(result_id, session_id, label, reviewer, ts) VALUES (?,?,?,?,?)",
                (int(result_id), session_id, label, reviewer, now),
            )
        self._summaries.pop(session_id, None)
        return Review(label, reviewer, now)

    def sign(self, session_id: str, name: str, alert_classes) -> SignState:
        """Sign the slide: refused while a queued cell is unreviewed or the slide is already signed."""
        name = _clean_name(name, "signer")
        self.session(session_id)
        state = self.sign_state(session_id)
        if state.signed:
            raise ReviewError(f"session {session_id} is already signed by {state.name}")
        pending = sum(c.review is None for c in self.queue(session_id, alert_classes))
        if pending:
            raise ReviewError(f"{pending} cell(s) in the review queue of {session_id} are not reviewed yet")
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                cells, last_id = self.db.execute(
                    "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM results WHERE session_id = ?", (session_id,)
                ).fetchone()
                self.db.execute(
                    "INSERT INTO signoffs(session_id, action, name, ts, cells, last_result_id) VALUES (?,?,?,?,?,?)",
                    (session_id, "sign", name, time.time(), cells, last_id),
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        self._summaries.pop(session_id, None)
        return self.sign_state(session_id)

    def reopen(self, session_id: str, name: str, note: str = "") -> SignState:
        """Undo a signature so that reviews can change again; who, when and why are kept."""
        name = _clean_name(name, "reviewer")
        state = self.sign_state(session_id)
        if state.status not in ("signed", "changed"):
            raise ReviewError(f"session {session_id} is not signed")
        with self.lock:
            self.db.execute(
                "INSERT INTO signoffs(session_id, action, name, ts, cells, last_result_id, note)"
                " VALUES (?,?,?,?,0,0,?)",
                (session_id, "reopen", name, time.time(), " ".join(str(note).split())[:200]),
            )
        self._summaries.pop(session_id, None)
        return self.sign_state(session_id)
