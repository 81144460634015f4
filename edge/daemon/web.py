"""The local page, /api/status (JSON) and /metrics (Prometheus text) of a running Session: flask,
served by waitress in a thread. 127.0.0.1 by default; any other bind needs a token (checked by
edge/daemon/config.py HttpConfig). Both render the Session's one Status (edge/daemon/status.py,
edge/daemon/metrics.py)."""

from __future__ import annotations

import hmac
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
from flask import Flask, Response, abort, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from edge.catalogue import caption
from edge.daemon.http_guard import create_guarded_server
from edge.daemon.metrics import StatusCollector
from edge.daemon.review_api import ReviewSite, review_blueprint
from edge.daemon.sinks import LiveView
from edge.daemon.status import page_json

if TYPE_CHECKING:
    from edge.daemon.session import Session

STATIC = Path(__file__).with_name("static")
PREVIEW_WIDTH = 800


# Box colours (BGR), as the page's: an alert class red, an uncertain cell orange, the rest green.
ALERT_BGR, UNCERTAIN_BGR, OK_BGR = (43, 57, 192), (0, 140, 255), (60, 170, 40)


def box_colour(crop: dict, alert_classes) -> tuple[int, int, int]:
    if crop["label"] in alert_classes:
        return ALERT_BGR
    return UNCERTAIN_BGR if crop["uncertain"] else OK_BGR


def render_preview(live: LiveView, alert_classes=()) -> tuple[bytes, list[dict]] | None:
    """The latest frame, scaled for a browser, with the region and the label drawn on it, and the
    crops it shows (so the page's caption always matches the picture). A cell of an alert class
    (archive.alert_classes, e.g. myeloblast) is drawn red."""
    frame, crops = live.snapshot()
    if frame is None:
        return None
    view = frame.view
    scale = min(1.0, PREVIEW_WIDTH / view.shape[1])
    img = (
        cv2.resize(view, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else view.copy()
    )
    for crop in crops:
        x, y, w, h = (int(round(v * scale)) for v in crop["box"])
        color = box_colour(crop, alert_classes)
        cv2.rectangle(img, (x, y), (x + w, y + h), color, 2)
        text = caption(crop["label"], crop["confidence"]) + ("  uncertain" if crop["uncertain"] else "")
        if crop.get("track_id") is not None:  # field mode: which cell, and whether it was just counted
            text += f"  #{crop['track_id']}" + ("  new" if crop.get("new") else "")
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
        ty = max(th + 6, y - 6)
        cv2.rectangle(img, (x, ty - th - 6), (x + tw + 8, ty + 4), color, -1)
        cv2.putText(img, text, (x + 4, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return (jpeg.tobytes(), crops) if ok else None


def require_token(app: Flask, token: str) -> None:
    """Every request carries the token (header, ?token= or the cookie the first ?token= sets)."""

    @app.before_request
    def check_token():
        if not token:
            return None
        header = request.headers.get("Authorization", "")
        given = (
            (header[7:] if header.startswith("Bearer ") else "")
            or request.args.get("token", "")
            or request.cookies.get("edge_token", "")
        )
        if not hmac.compare_digest(given.encode(), token.encode()):
            return Response(
                "token required (Authorization: Bearer TOKEN or ?token=TOKEN)\n", 401, mimetype="text/plain"
            )
        return None

    @app.after_request
    def remember_token(response):
        # The page's own fetches then carry the token without putting it in every URL.
        if token and request.args.get("token"):
            response.set_cookie("edge_token", token, httponly=True, samesite="Strict")
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def static_routes(app: Flask) -> None:
    """The pages' files and their icon (the daemon's app and `edge review serve`'s)."""

    @app.get("/static/<path:name>")
    def static_file(name):
        return send_from_directory(STATIC, name)

    @app.get("/favicon.ico")
    def favicon():  # what a browser asks for when a page names no icon (a bookmark, a JSON page)
        return send_from_directory(STATIC, "favicon.svg", mimetype="image/svg+xml")


def create_app(session: Session, token: str = "") -> Flask:
    app = Flask(__name__, static_folder=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(session.status))
    require_token(app, token)
    static_routes(app)

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/api/status")
    def status():
        return jsonify(page_json(session.status()))

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/frame.jpg")
    def frame():
        preview = render_preview(session.live, session.config.archive.alert_classes)
        if preview is None:
            return Response(status=204)
        data, crops = preview
        return Response(data, mimetype="image/jpeg", headers={"X-Edge-Crops": json.dumps(crops)})

    @app.get("/flagged/<path:name>")
    def flagged(name):
        if not name.endswith(".jpg"):
            abort(404)
        # absolute: flask resolves a relative folder (--archive flagged) against its own package
        return send_from_directory(session.archive.root.absolute(), name)

    @app.get("/healthz")
    def healthz():
        return Response("ok\n", mimetype="text/plain")

    # the review queue and sign-off
    app.register_blueprint(review_blueprint(ReviewSite.of_daemon(session), STATIC, token))
    return app


class WebServer:
    """`session`'s page (create_app), or another `app` (edge review serve), served by waitress."""

    def __init__(self, session: Session | None, host: str, port: int, token: str = "", app=None):
        # waitress warns "Task queue depth is 2" whenever a browser opens a few requests at once: noise here.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self.server = create_guarded_server(  # slow or idle connections cannot starve it (http_guard.py)
            app or create_app(session, token),
            host=host,
            port=port,
            threads=4,
            ident="edge-run",
            clear_untrusted_proxy_headers=True,
            asyncore_loop_timeout=0.25,  # how soon the serving loop notices stop()
            channel_timeout=15,  # silent connections; http_guard bounds the time to send a request
            asyncore_use_poll=True,  # no select() limit on the number of sockets
        )
        self.host = host
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _serve(self) -> None:
        try:
            self.server.run()
        except OSError:  # closed from stop()
            pass

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        # waitress's loop runs while any socket is in its map: close the listener and every open
        # browser connection (keep-alive), or the loop, and the shutdown, would wait for them.
        self.server.close()
        for channel in list(self.server._map.values()):
            try:
                channel.close()
            except OSError:
                pass
        self.server.task_dispatcher.shutdown(timeout=1)
        self.thread.join(timeout=1)
