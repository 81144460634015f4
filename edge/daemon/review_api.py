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
import os
from dataclasses import asdict
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request, send_from_directory

from edge.catalogue import UNKNOWN
from edge.daemon.address import is_loopback
from edge.daemon.archive import crop_stem
from edge.results.reviews import ReviewError
from edge.results.schema import ResultsError

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


class ReviewApi:
    """The handlers, over the daemon's review book (its own connection to results.db) and archive."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.book = daemon.reviews

    def session_arg(self, body: dict | None = None) -> str:
        session = (body or {}).get("session") or request.args.get("session") or self.daemon.session_id
        self.book.session(session)  # 404 for a session not in this database
        return str(session)

    def image_of(self, session: str, cell) -> str | None:
        name = f"{session}/{crop_stem(cell.frame_id, cell.crop_index, cell.label)}.jpg"
        return f"flagged/{name}" if os.path.isfile(self.daemon.archive.root / name) else None

    def differential(self, session: str) -> list[dict]:
        """Model and verified counts per label, the way the live page counts (all counted cells)."""
        daemon, book = self.daemon, self.book
        live = session == daemon.session_id
        model = dict(daemon.differential.counts) if live else book.model_counts(session)
        verified = book.summary(session, model, daemon.config.differential.count_uncertain, 0)["verified"]
        labels = sorted((set(model) | set(verified) | set(book.labels(session))) - {UNKNOWN})
        return [{"label": k, "model": model.get(k, 0), "verified": verified.get(k, 0)} for k in labels]

    def queue(self):
        session, book = self.session_arg(), self.book
        cells = book.queue(session, book.alert_classes(session))
        return jsonify(
            {
                "session_id": session,
                "live_session": self.daemon.session_id,
                "labels": book.labels(session),
                "sign": asdict(book.sign_state(session)),
                "cells": [{**c.as_dict(), "image": self.image_of(session, c)} for c in cells],
                "differential": self.differential(session),
            }
        )

    def sessions(self):
        return jsonify({"live_session": self.daemon.session_id, "sessions": self.book.sessions()})

    @staticmethod
    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ReviewError("expected a JSON object", 400)
        return data

    def review(self):
        data = self.body()
        session = self.session_arg(data)
        try:
            cell = int(data.get("cell"))
        except (TypeError, ValueError):
            raise ReviewError("cell: expected a cell id (results.id)", 400) from None
        labels = self.book.labels(session)
        done = self.book.review(
            session, cell, str(data.get("label", "")), str(data.get("reviewer", "")), labels
        )
        return jsonify({"cell": cell, "review": asdict(done)})

    def sign(self):
        data = self.body()
        session = self.session_arg(data)
        state = self.book.sign(session, str(data.get("reviewer", "")), self.book.alert_classes(session))
        return jsonify({"session_id": session, "sign": asdict(state)})

    def reopen(self):
        data = self.body()
        session = self.session_arg(data)
        state = self.book.reopen(session, str(data.get("reviewer", "")), str(data.get("note", "")))
        return jsonify({"session_id": session, "sign": asdict(state)})


def review_blueprint(daemon, static_dir, token: str = "") -> Blueprint:
    bp = Blueprint("review", __name__)
    api = ReviewApi(daemon)

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
