"""The review page (/review) and its API: the queue of cells that need a look, a technician's
confirmation or reclassification of each, and the slide's sign-off (edge/lab/reviews.py keeps them).

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

from edge.daemon.archive import crop_stem
from edge.daemon.config import _is_loopback
from edge.catalogue import UNKNOWN
from edge.lab.reviews import ReviewError

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
        if not _is_loopback(urlsplit("//" + request.host).hostname or ""):
            return _refuse(
                403, f"write actions without a token only from a loopback address, not {request.host}"
            )
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        return _refuse(403, f"cross-origin write refused ({origin})")
    if not request.is_json:
        return _refuse(415, "write actions take a JSON body (Content-Type: application/json)")
    return None


def review_blueprint(daemon, static_dir, token: str = "") -> Blueprint:
    bp = Blueprint("review", __name__)
    book = daemon.reviews

    @bp.before_request
    def guard():
        if request.method == "POST":
            return write_guard(token)
        return None

    @bp.errorhandler(ReviewError)
    def review_error(exc: ReviewError):
        return _refuse(exc.status, str(exc))

    def session_arg(body: dict | None = None) -> str:
        session = (body or {}).get("session") or request.args.get("session") or daemon.session_id
        book.session(session)  # 404 for a session not in this database
        return str(session)

    def image_of(session: str, cell) -> str | None:
        name = f"{session}/{crop_stem(cell.frame_id, cell.crop_index, cell.label)}.jpg"
        return f"flagged/{name}" if os.path.isfile(daemon.archive.root / name) else None

    @bp.get("/review")
    def page():
        return send_from_directory(static_dir, "review.html")

    @bp.get("/api/review")
    def queue():
        session = session_arg()
        cells = book.queue(session, book.alert_classes(session))
        return jsonify(
            {
                "session_id": session,
                "live_session": daemon.session_id,
                "labels": book.labels(session),
                "sign": asdict(book.sign_state(session)),
                "cells": [{**c.as_dict(), "image": image_of(session, c)} for c in cells],
                "differential": differential(session),
            }
        )

    def differential(session: str) -> list[dict]:
        """Model and verified counts per label, the way the live page counts (all counted cells)."""
        live = session == daemon.session_id
        model = dict(daemon.differential.counts) if live else book.model_counts(session)
        verified = book.summary(session, model, daemon.config.differential.count_uncertain, 0)["verified"]
        labels = sorted((set(model) | set(verified) | set(book.labels(session))) - {UNKNOWN})
        return [{"label": k, "model": model.get(k, 0), "verified": verified.get(k, 0)} for k in labels]

    @bp.get("/api/review/sessions")
    def sessions():
        return jsonify({"live_session": daemon.session_id, "sessions": book.sessions()})

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ReviewError("expected a JSON object", 400)
        return data

    @bp.post("/api/review")
    def review():
        data = body()
        session = session_arg(data)
        try:
            cell = int(data.get("cell"))
        except (TypeError, ValueError):
            raise ReviewError("cell: expected a cell id (results.id)", 400) from None
        done = book.review(
            session, cell, str(data.get("label", "")), str(data.get("reviewer", "")), book.labels(session)
        )
        return jsonify({"cell": cell, "review": asdict(done)})

    @bp.post("/api/review/sign")
    def sign():
        data = body()
        session = session_arg(data)
        state = book.sign(session, str(data.get("reviewer", "")), book.alert_classes(session))
        return jsonify({"session_id": session, "sign": asdict(state)})

    @bp.post("/api/review/reopen")
    def reopen():
        data = body()
        session = session_arg(data)
        state = book.reopen(session, str(data.get("reviewer", "")), str(data.get("note", "")))
        return jsonify({"session_id": session, "sign": asdict(state)})

    return bp
