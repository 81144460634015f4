"""A real HTTP server on 127.0.0.1 for the tests that send to one (FHIR delivery, the report's
--fhir-url): run in a thread around a handler class, and the one way its handlers answer."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type="application/fhir+json"):
    """Send `body` with its length, so the client never waits for a close."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a thread, around a handler class; `url` is its /fhir."""

    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.url = self.base + "/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
