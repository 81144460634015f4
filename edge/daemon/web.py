"""The local page, /api/status (JSON) and /metrics (Prometheus text): flask, served by waitress
in a thread. 127.0.0.1 by default; any other bind needs a token (checked in config.validate)."""

from __future__ import annotations

import hmac
import json
import logging
import threading
from pathlib import Path

import cv2
from flask import Flask, Response, abort, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry
from waitress.server import create_server

STATIC = Path(__file__).with_name("static")
PREVIEW_WIDTH = 800
ARCHIVE_STATES = ("active", "paused_low_disk", "disabled", "error")


class DaemonCollector:
    """Exposes a status snapshot as Prometheus metrics, computed at scrape time."""

    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        s = self.daemon.status()
        frames, stages = s["frames"], s["stages_ms"]
        g = GaugeMetricFamily
        info = g(
            "edge_model_info",
            "Model and source in use",
            labels=["sha256", "architecture", "source", "session"],
        )
        info.add_metric(
            [s["model"]["sha256"], s["model"]["architecture"], s["source"]["source"], s["session_id"]], 1
        )
        yield info
        yield g(
            "edge_inference_ms",
            "Mean invoke() time per frame over the recent window, ms",
            value=stages.get("invoke", {}).get("mean", 0.0),
        )
        stage = g(
            "edge_stage_ms", "Mean time per pipeline stage over the recent window, ms", labels=["stage"]
        )
        for name, v in stages.items():
            stage.add_metric([name], v["mean"])
        yield stage
        yield g(
            "edge_camera_fps", "Frames read from the source per second (10 s window)", value=s["camera_fps"]
        )
        yield g("edge_processed_fps", "Frames classified per second (10 s window)", value=s["processed_fps"])
        c = CounterMetricFamily
        yield c("edge_frames_captured", "Frames read from the source", value=frames["captured"])
        yield c("edge_frames_processed", "Frames classified and committed", value=frames["processed"])
        skipped = c("edge_frames_skipped", "Frames not classified", labels=["reason"])
        skipped.add_metric(["queue_full"], frames["dropped"])
        skipped.add_metric(["corrupt"], frames["corrupt"])
        yield skipped
        yield c(
            "edge_source_errors", "Source failures (disconnects, device errors)", value=s["source"]["errors"]
        )
        yield c("edge_reconnects", "Successful reconnections to the source", value=s["source"]["reconnects"])
        yield g(
            "edge_uncertain_ratio",
            "Fraction of classified cells flagged uncertain",
            value=s["uncertain_rate"],
        )
        a = s["archive"]
        state = g(
            "edge_archive_state", "Flagged-image archive state (1 for the current one)", labels=["state"]
        )
        for name in ARCHIVE_STATES:
            state.add_metric([name], float(a["state"] == name))
        yield state
        yield g(
            "edge_archive_free_bytes",
            "Free space where the archive writes",
            value=max(0.0, a["free_mb"] or 0.0) * 1e6,
        )
        yield c("edge_archive_saved", "Flagged images saved", value=a["saved"])
        yield c(
            "edge_archive_skipped_low_disk",
            "Flagged images not saved for lack of disk space",
            value=a["skipped_low_disk"],
        )
        diff = g("edge_differential_cells", "Cells counted this session per label", labels=["label"])
        for row in s["differential"]["counts"]:
            diff.add_metric([row["label"]], row["count"])
        yield diff
        alert = g("edge_alert_active", "Differential alert rule firing (1) or not (0)", labels=["rule"])
        for rule in s["differential"]["alerts"]:
            alert.add_metric([rule["name"]], float(rule["active"]))
        yield alert
        fraction = g(
            "edge_alert_fraction",
            "Fraction of confident, known cells in the rule's classes, with its 95% Wilson interval",
            labels=["rule", "bound"],
        )
        for rule in s["differential"]["alerts"]:
            for bound, value in zip(
                ("estimate", "low", "high"), (rule["fraction"], *rule["interval"]), strict=True
            ):
                fraction.add_metric([rule["name"], bound], value)
        yield fraction
        yield c(
            "edge_cells_unknown",
            "Cells rejected as unlike the training data",
            value=s["differential"]["unknown"],
        )
        if "field" in s:  # field mode
            f = s["field"]
            yield g(
                "edge_field_cells_per_frame",
                "White cells detected per frame (recent frames)",
                value=f["cells_per_frame"],
            )
            yield g(
                "edge_field_cells_last_frame",
                "White cells detected in the latest frame",
                value=f["cells_last_frame"],
            )
            yield c(
                "edge_fields_seen",
                "Microscope fields seen (a jump or a drift of half the view starts one)",
                value=f["fields_seen"],
            )
            yield c(
                "edge_field_cells_counted",
                "White cells counted: tracks started, once per cell",
                value=f["cells_counted"],
            )
            yield g(
                "edge_differential_progress",
                "Cells in the differential over its target (pipeline.field.target_cells)",
                value=f["differential_progress"],
            )
        yield g("edge_uptime_seconds", "Seconds since the daemon started", value=s["uptime_s"])
        store = s["store"]
        yield g(
            "edge_store_full",
            "The results database refuses writes (disk or max_db_mb full)",
            value=float(store["state"] == "full"),
        )
        yield g(
            "edge_store_waiting",
            "Frames classified but not yet written (waiting for disk space)",
            value=store["waiting"],
        )
        yield c(
            "edge_store_lost",
            "Frames whose results could not be kept while the disk was full",
            value=store["lost"],
        )
        yield from mqtt_metrics(s["mqtt"])


def mqtt_metrics(m: dict):
    """The MQTT publisher's counters (none when [mqtt] is off)."""
    if not m.get("enabled"):
        return
    g, c = GaugeMetricFamily, CounterMetricFamily
    yield g(
        "edge_mqtt_connected",
        "Connected to the MQTT broker (1) or not (0)",
        value=float(m["state"] == "connected"),
    )
    yield g(
        "edge_mqtt_queued",
        "Results and alerts committed and not yet acknowledged by the broker",
        value=m["queued"],
    )
    yield g("edge_mqtt_inflight", "Messages sent and awaiting PUBACK", value=m["inflight"])
    yield c(
        "edge_mqtt_sent",
        "Results and alerts acknowledged by the broker (PUBACK) since start",
        value=m["sent"],
    )
    yield c("edge_mqtt_reconnects", "Connections to the broker after the first", value=m["reconnects"])
    yield c(
        "edge_mqtt_refused",
        "Messages the broker refused (MQTT 5 reason code); sent again later",
        value=m["refused"],
    )


def render_preview(daemon) -> tuple[bytes, list[dict]] | None:
    """The latest frame, scaled for a browser, with the region and the label drawn on it, and the
    crops it shows (so the page's caption always matches the picture)."""
    frame, crops = daemon.live.snapshot()
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
        text = f"{crop['label']} {crop['confidence']:.0%}" + ("  uncertain" if crop["uncertain"] else "")
        if crop.get("track_id") is not None:  # field mode: which cell, and whether it was just counted
            text += f"  #{crop['track_id']}" + ("  new" if crop.get("new") else "")
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
        ty = max(th + 6, y - 6)
        cv2.rectangle(img, (x, ty - th - 6), (x + tw + 8, ty + 4), color, -1)
        cv2.putText(img, text, (x + 4, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return (jpeg.tobytes(), crops) if ok else None


def create_app(daemon, token: str = "") -> Flask:
    app = Flask(__name__, static_folder=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))

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

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name):
        return send_from_directory(STATIC, name)

    @app.get("/api/status")
    def status():
        return jsonify(daemon.status())

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/frame.jpg")
    def frame():
        preview = render_preview(daemon)
        if preview is None:
            return Response(status=204)
        data, crops = preview
        return Response(data, mimetype="image/jpeg", headers={"X-Edge-Crops": json.dumps(crops)})

    @app.get("/flagged/<path:name>")
    def flagged(name):
        if not name.endswith(".jpg"):
            abort(404)
        return send_from_directory(daemon.archive.root, name)

    @app.get("/healthz")
    def healthz():
        return Response("ok\n", mimetype="text/plain")

    if getattr(daemon, "reviews", None) is not None:  # the review queue and sign-off (review_api.py)
        from edge.daemon.review_api import review_blueprint

        app.register_blueprint(review_blueprint(daemon, STATIC, token))
    return app


class WebServer:
    def __init__(self, daemon, host: str, port: int, token: str = ""):
        # waitress warns "Task queue depth is 2" whenever a browser opens a few requests at once: noise here.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self.server = create_server(
            create_app(daemon, token),
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
