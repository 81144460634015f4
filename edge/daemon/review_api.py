"""The review page (/review) and its API: the queue of cells that need a look, a technician's
confirmation or reclassification of each, and the slide's sign-off (edge/results/reviews.py keeps them).

Write actions are POSTs with a JSON body, never GETs. They are CSRF-safe: a cross-site page can
neither add a custom header nor send JSON without the browser asking this server first (CORS
preflight), which it never allows. So a write needs, in a header:
- `Authorization: Bearer TOKEN` whenever the daemon has a token (any non-loopback bind has one); the
  cookie and ?token= that let the page's GETs through are not enough for a write;
- without a token (loopback only) `X-Edge-Review: 1`, a Host that is a loopback name (a DNS-rebinding
  page arrives with its own host name) and, if the browser sends one, a same-origin Origin.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request, send_from_directory
from pydantic import Field, ValidationError

from edge.catalogue import UNKNOWN
from edge.daemon.address import is_loopback
from edge.daemon.archive import crop_stem
from edge.daemon.section import Section, error_line
from edge.results.reviews import MAX_CELL_ID, ReviewBook, ReviewError
from edge.results.schema import ResultsError
from edge.results.verification import MIN_REVIEW_S, NAME_MAX, clean_text

WRITE_HEADER = "X-Edge-Review"


def _refuse(status: int, message: str):
    return jsonify({"error": message}), status


def write_guard(token: str):
    """None when this POST may write, else the refusal."""
    if token:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _refuse(401, "write actions need the token in a header: Authorization: Bearer TOKEN")
    else:
        if request.headers.get(WRITE_HEADER) != "1":
            return _refuse(403, f"write actions need the header {WRITE_HEADER}: 1")
        if not is_loopback(urlsplit("//" + request.host).hostname or ""):
            return _refuse(
                403, f"write actions without a token only from a loopback address, not {request.host}"
            )
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        return _refuse(403, f"cross-origin write refused ({origin})")
    if not request.is_json:
        return _refuse(415, "write actions take a JSON body (Content-Type: application/json)")
    return None


# What a write's JSON body may hold: strict types and bounds, so that a null, a list or a number past
# what SQLite stores is a 400 naming the key, never a 500. Names and reasons are checked for content
# (not blank, printable) by the book (edge/results/verification.py clean_text).
Text = Annotated[str, Field(max_length=1000)]


class SignRequest(Section):
    session: Text | None = None  # the live session when left out
    reviewer: Text


class ReviewRequest(SignRequest):
    cell: int = Field(ge=1, le=MAX_CELL_ID)  # results.id
    label: Text
    # how long the page had shown the cell when the technician decided (the page's own clock)
    shown_s: float | None = Field(None, ge=0, le=1e9)


class ReopenRequest(SignRequest):
    note: Text  # why


@dataclass(frozen=True)
class ReviewSite:
    """What the review page works on: a results.db's review book and where each session's flagged
    crops are; with a running daemon (edge run), also its live session and that session's count."""

    book: ReviewBook
    archive_root: Callable[[str], Path]  # session id -> the archive holding SESSION/<crop>.jpg
    live_session: str | None = None
    live_counts: Callable[[], dict] | None = None  # the live session's count per label

    @classmethod
    def of_daemon(cls, session) -> ReviewSite:
        """The daemon's (edge/daemon/session.py Session): its book, archive and live count."""
        return cls(
            session.reviews,
            lambda _: session.archive.root,
            session.session_id,
            lambda: dict(session.differential.counts),
        )


class ReviewApi:
    """The handlers, over a ReviewSite (its own connection to results.db)."""

    def __init__(self, site: ReviewSite):
        self.site = site
        self.book = site.book

    def session_arg(self, given: str | None = None) -> str:
        session = given or request.args.get("session") or self.site.live_session
        if not session:  # no daemon: the newest slide
            ids = self.book.session_ids()
            if not ids:
                raise ResultsError(f"{self.book.path} holds no session yet", 404)
            session = ids[0]
        self.book.session(session)  # 404 for a session not in this database
        return str(session)

    def image_of(self, session: str, cell) -> str | None:
        name = f"{session}/{crop_stem(cell.frame_id, cell.crop_index, cell.label)}.jpg"
        return f"flagged/{name}" if (self.site.archive_root(session) / name).is_file() else None

    def differential(self, session: str, verified: dict) -> list[dict]:
        """Per label: the model's count and the verified one (cells a technician decided)."""
        site, book = self.site, self.book
        live = session == site.live_session and site.live_counts is not None
        model = site.live_counts() if live else book.model_counts(session)
        labels = sorted((set(model) | set(verified) | set(book.labels(session))) - {UNKNOWN})
        return [{"label": k, "model": model.get(k, 0), "verified": verified.get(k, 0)} for k in labels]

    def queue(self):
        session, book = self.session_arg(), self.book
        alert_classes = book.alert_classes(session)
        cells = book.queue(session, alert_classes)
        v = book.verification(session, alert_classes)
        return jsonify(
            {
                "session_id": session,
                "live_session": self.site.live_session,
                "labels": book.labels(session),
                "sign": asdict(book.sign_state(session)),
                "cells": [{**c.as_dict(), "image": self.image_of(session, c)} for c in cells],
                "verification": {**v.as_dict(), "text": v.text()},
                "differential": self.differential(session, v.verified),
            }
        )

    def sessions(self):
        return jsonify({"live_session": self.site.live_session, "sessions": self.book.sessions()})

    @staticmethod
    def body(model: type[Section]):
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ReviewError("expected a JSON object", 400)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ReviewError(error_line(exc, model)[:300], 400) from None

    def decision_seconds(self, session: str, reviewer: str, shown_s: float | None) -> float | None:
        """How long the technician looked: what the page measured, but never more than the server's
        own clock allows, the time since this reviewer's previous decision on the slide (the page
        shows the next cell right after one). None when neither is known."""
        last = self.book.last_review_ts(session, reviewer)
        server_s = max(0.0, time.time() - last) if last is not None else None
        known = [s for s in (shown_s, server_s) if s is not None]
        return round(min(known), 3) if known else None

    def review(self):
        req = self.body(ReviewRequest)
        session = self.session_arg(req.session)
        try:
            reviewer = clean_text(req.reviewer, "reviewer", NAME_MAX)
        except ValueError as exc:
            raise ReviewError(str(exc), 400) from None
        seconds = self.decision_seconds(session, reviewer, req.shown_s)
        labels = self.book.labels(session)
        done = self.book.review(session, req.cell, req.label, reviewer, labels, seconds)
        return jsonify({"cell": req.cell, "review": done.as_dict(), "min_review_s": MIN_REVIEW_S})

    def sign(self):
        req = self.body(SignRequest)
        session = self.session_arg(req.session)
        state = self.book.sign(session, req.reviewer, self.book.alert_classes(session))
        return jsonify({"session_id": session, "sign": asdict(state)})

    def reopen(self):
        req = self.body(ReopenRequest)
        session = self.session_arg(req.session)
        state = self.book.reopen(session, req.reviewer, req.note)
        return jsonify({"session_id": session, "sign": asdict(state)})


def review_blueprint(site: ReviewSite, static_dir, token: str = "") -> Blueprint:
    bp = Blueprint("review", __name__)
    api = ReviewApi(site)

    @bp.before_request
    def guard():
        if request.method == "POST":
            return write_guard(token)
        return None

    @bp.errorhandler(ResultsError)  # a review refused, an unknown session or cell: one line, its status
    def refused(exc: ResultsError):
        return _refuse(exc.status, str(exc))

    @bp.get("/review")
    def page():
        return send_from_directory(static_dir, "review.html")

    bp.add_url_rule("/api/review", "queue", api.queue, methods=["GET"])
    bp.add_url_rule("/api/review/sessions", "sessions", api.sessions, methods=["GET"])
    bp.add_url_rule("/api/review", "review", api.review, methods=["POST"])
    bp.add_url_rule("/api/review/sign", "sign", api.sign, methods=["POST"])
    bp.add_url_rule("/api/review/reopen", "reopen", api.reopen, methods=["POST"])
    return bp
