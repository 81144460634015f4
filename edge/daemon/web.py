"""The local page, /api/status (JSON) and /metrics (Prometheus text) of a running Session: flask,
served by waitress in a thread. 127.0.0.1 by default; any other bind needs a token (checked in
config.validate). Both render the Session's one Status (edge/daemon/status.py, edge/daemon/metrics.py)."""

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
from waitress.server import create_server

from edge.catalogue import caption
from edge.daemon.metrics import StatusCollector
from edge.daemon.review_api import review_blueprint
from edge.daemon.sinks import LiveView
from edge.daemon.status import page_json

if TYPE_CHECKING:
    from edge.daemon.session import Session

STATIC = Path(__file__).with_name("static")
PREVIEW_WIDTH = 800


def render_preview(live: LiveView) -> tuple[bytes, list[dict]] | None:
    """The latest frame, scaled for a browser, with the region and the label drawn on it, and the
    crops it shows (so the page's caption always matches the picture)."""
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
        color = (0, 140, 255) if crop["uncertain"] else (60, 170, 40)
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


def create_app(session: Session, token: str = "") -> Flask:
    app = Flask(__name__, static_folder=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(session.status))
    require_token(app, token)

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name):
        return send_from_directory(STATIC, name)

    @app.get("/api/status")
    def status():
        return jsonify(page_json(session.status()))

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/frame.jpg")
    def frame():
        preview = render_preview(session.live)
        if preview is None:
            return Response(status=204)
        data, crops = preview
        return Response(data, mimetype="image/jpeg", headers={"X-Edge-Crops": json.dumps(crops)})

    @app.get("/flagged/<path:name>")
    def flagged(name):
        if not name.endswith(".jpg"):
            abort(404)
        return send_from_directory(session.archive.root, name)

    @app.get("/healthz")
    def healthz():
        return Response("ok\n", mimetype="text/plain")

    app.register_blueprint(review_blueprint(session, STATIC, token))  # the review queue and sign-off
    return app


class WebServer:
    def __init__(self, session: Session, host: str, port: int, token: str = ""):
        # waitress warns "Task queue depth is 2" whenever a browser opens a few requests at once: noise here.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self.server = create_server(
            create_app(session, token),
            host=host,
            port=port,
            threads=4,
            ident="edge-run",
            clear_untrusted_proxy_headers=True,
            asyncore_loop_timeout=0.25,  # how soon the serving loop notices stop()
            # Idle connections must not starve the page: waitress accepts 100 by default and keeps an
            # idle one for 120 s, so ~100 idle sockets from one host blocked every request. Many more
            # may be open now (poll(), no select() limit), and an idle one is closed after 15 s.
            connection_limit=1000,
            channel_timeout=15,
            cleanup_interval=5,
            asyncore_use_poll=True,
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
