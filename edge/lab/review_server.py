"""`edge review serve`: the review page of `edge run` without the daemon, on a results.db.

The same page, API, write guard and token rules as the daemon's (edge/daemon/review_api.py,
edge/daemon/web.py require_token), and the same sign lock: a signed slide takes no review until it is
re-opened, and each change is one IMMEDIATE transaction, so this server and a running daemon can
share a database. It reads the database as it is: no session is started, no row written but the
reviews and sign-offs a technician makes (an older database gains the empty review tables, as
`edge report` does). It adds /report, the slide's report (edge/lab/report.py) as HTML.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, Response, abort, redirect, request, send_from_directory

from edge.daemon.review_api import ReviewSite, review_blueprint
from edge.daemon.web import STATIC, WebServer, require_token, static_routes
from edge.lab.report import render_html
from edge.lab.slide import archive_root, load_slide
from edge.results.reviews import ReviewBook
from edge.results.schema import ResultsError


def create_review_app(book: ReviewBook, token: str = "", archive: Path | None = None) -> Flask:
    """The review page and /report over `book`'s database; `archive` overrides where each session's
    flagged crops are (default: where the daemon that recorded it kept them)."""
    db = book.path
    roots: dict[str, Path] = {}  # a session's archive does not move while the page is served

    def root(session: str) -> Path:
        if session not in roots:
            roots[session] = archive_root(db, book.session(session).config, archive)
        return roots[session]

    site = ReviewSite(book, root)
    app = Flask(__name__, static_folder=None)
    require_token(app, token)
    static_routes(app)

    @app.get("/")
    def index():
        return redirect("review")

    @app.get("/flagged/<session>/<name>")
    def flagged(session: str, name: str):
        if not name.endswith(".jpg"):
            abort(404)
        try:
            folder = root(session) / session
        except ResultsError:
            abort(404)
        return send_from_directory(folder, name)

    @app.get("/report")
    def report():
        session = request.args.get("session") or (book.session_ids() or [""])[0]
        try:
            slide = load_slide(db, session, archive)
        except ResultsError as exc:
            return Response(f"{exc}\n", exc.status, mimetype="text/plain")
        return Response(render_html(slide), mimetype="text/html")

    @app.get("/healthz")
    def healthz():
        return Response("ok\n", mimetype="text/plain")

    app.register_blueprint(review_blueprint(site, STATIC, token))
    return app


def serve(book: ReviewBook, host: str, port: int, token: str = "", archive: Path | None = None) -> WebServer:
    """The review server, listening (not yet serving: `.start()`); OSError when it cannot bind."""
    return WebServer(None, host, port, app=create_review_app(book, token, archive))
