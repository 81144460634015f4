"""Sending a FHIR transaction Bundle to a laboratory system, so that "sent" means the server took it.

- Only http(s) URLs with a host (no file:, data:, ftp:).
- A redirect is never followed as a GET: 307 and 308 re-POST the same body (the standard keeps the
  method), to http(s) only and never from https down to http, at most MAX_REDIRECTS times; any other
  3xx is a refusal naming where it pointed.
- Success is a 2xx whose body is a FHIR Bundle of type `transaction-response`; a 200 login page of a
  proxy is not a delivery.
- One deadline covers every attempt, wait and byte: a watchdog shuts the socket of a server that
  drips or hangs.
- Retries (network errors, time-outs, 408, 429, 5xx) resend the same bytes. The bundle's fullUrls and
  identifiers are stable and every entry is a conditional create (edge/lab/fhir.py), so a transaction
  the server took before its answer was lost creates nothing the second time.

http.client, not urllib: urllib follows a 302 by turning the POST into a GET.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

from edge import __version__
from edge.errors import EdgeError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
MAX_REPLY = 16 * 2**20  # a transaction-response is a few kB; more is not a FHIR server's answer
RETRIED = (408, 429)  # and 5xx


class FhirError(EdgeError):
    exit_code = 6


class FhirUrlError(FhirError):
    """The URL is not one a bundle may be sent to (a usage error)."""

    exit_code = 2


def check_url(url: str) -> urllib.parse.SplitResult:
    """`url` split, if it is an http(s) URL with a host; a FhirUrlError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        raise FhirUrlError(f"{url}: not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FhirUrlError(f"{url}: not an http(s) URL of a FHIR server (give e.g. https://lis.local/fhir)")
    return parts


@dataclass
class Reply:
    status: int
    url: str  # where it came from, after 307/308 redirects
    content_type: str
    location: str
    retry_after: float
    body: bytes


class _Deadline(Exception):
    pass


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value or 0))
    except ValueError:
        return 0.0  # an HTTP date: the backoff decides


def _shut(conn: http.client.HTTPConnection, fired: threading.Event) -> None:
    """The watchdog: a blocked connect, send or recv returns at once."""
    fired.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _exchange(url: str, data: bytes, deadline: float, timeout_s: float) -> Reply:
    """One POST and its whole answer, or _Deadline / OSError / HTTPException."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Deadline
    parts = check_url(url)
    if parts.scheme.lower() == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname,
            parts.port,
            timeout=min(timeout_s, remaining),
            context=ssl.create_default_context(),
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=min(timeout_s, remaining))
    fired = threading.Event()
    watchdog = threading.Timer(remaining, _shut, (conn, fired))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request(
            "POST",
            urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
            body=data,
            headers={
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
                "User-Agent": f"edge-hemato/{__version__} ({socket.gethostname()})",
            },
        )
        response = conn.getresponse()
        body = response.read(MAX_REPLY + 1)
        reply = Reply(
            response.status,
            url,
            response.getheader("Content-Type", ""),
            response.getheader("Location", ""),
            _retry_after(response.getheader("Retry-After")),
            body,
        )
    except (OSError, http.client.HTTPException):
        if fired.is_set():
            raise _Deadline from None
        raise
    finally:
        watchdog.cancel()
        conn.close()
    if fired.is_set():  # the body was cut short at the deadline
        raise _Deadline
    return reply


def _follow(url: str, data: bytes, deadline: float, timeout_s: float) -> Reply:
    """POST to `url`, re-POSTing to where a 307 or 308 points; other answers are returned as they are."""
    for _ in range(MAX_REDIRECTS + 1):
        reply = _exchange(url, data, deadline, timeout_s)
        if reply.status not in (307, 308) or not reply.location:
            return reply
        target = urllib.parse.urljoin(url, reply.location)
        check_url(target)
        if url.lower().startswith("https:") and not target.lower().startswith("https:"):
            raise FhirError(f"{url}: HTTP {reply.status} redirect from https to {target}: not followed")
        url = target
    raise FhirError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _is_transaction_response(body: bytes) -> bool:
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return (
        isinstance(answer, dict)
        and answer.get("resourceType") == "Bundle"
        and answer.get("type") == "transaction-response"
    )


def _judge(url: str, reply: Reply) -> str | None:
    """None when the server took the bundle; the reason to retry; or a FhirError for a refusal."""
    code, where = reply.status, reply.url if reply.url == url else f"{url} (redirected to {reply.url})"
    if 200 <= code < 300:
        if len(reply.body) <= MAX_REPLY and _is_transaction_response(reply.body):
            return None
        kind = reply.content_type.split(";")[0].strip() or "no content type"
        raise FhirError(
            f"{where}: HTTP {code} but the answer is not a FHIR transaction-response Bundle "
            f"({kind}: {_outcome(reply.body)!r}): not sent"
        )
    if 300 <= code < 400:
        raise FhirError(
            f"{where}: HTTP {code} redirect to {reply.location or '(nowhere)'}: a POST is not followed "
            "as a GET; give the server's own URL"
        )
    last = f"HTTP {code} {_outcome(reply.body)}".strip()
    if code in RETRIED or code >= 500:
        return last
    raise FhirError(f"{where}: the server refused the bundle: {last}")


def post_bundle(
    url: str,
    body: str,
    retries: int = 3,
    deadline_s: float = 60.0,
    timeout_s: float | None = None,
    backoff_s: float = 1.0,
) -> int:
    """POST the bundle to a FHIR server's base URL and return the HTTP status of its
    transaction-response. Retries (backoff doubling, or the server's Retry-After) on network errors,
    time-outs, 408, 429 and 5xx, all within `deadline_s`; anything else is a FhirError. A server
    silent for `timeout_s` (default: the deadline shared by the attempts) costs one attempt."""
    check_url(url)
    timeout_s = timeout_s or deadline_s / (retries + 1)
    data = body.encode()
    deadline = time.monotonic() + deadline_s
    last, attempt = "", 0
    while True:
        try:
            reply = _follow(url, data, deadline, timeout_s)
        except _Deadline:
            last = f"no complete answer within the {deadline_s:g} s deadline"
            break
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc) or type(exc).__name__
            wait = 0.0
        else:
            reason = _judge(url, reply)
            if reason is None:
                return reply.status
            last, wait = reason, reply.retry_after
        if attempt >= retries:
            break
        wait = max(wait, backoff_s * 2**attempt)
        if time.monotonic() + wait >= deadline:
            last += f"; no time left for a retry within the {deadline_s:g} s deadline"
            break
        attempt += 1
        log.warning(f"fhir: {url}: {last}; retrying ({attempt}/{retries})")
        time.sleep(wait)
    raise FhirError(f"{url}: not sent after {attempt + 1} attempt(s) ({last})")


def _outcome(body: bytes) -> str:
    """The first diagnostic of an OperationOutcome, or the start of whatever came back."""
    try:
        issues = json.loads(body).get("issue") or []
        return "; ".join(i.get("diagnostics") or i.get("code", "") for i in issues)[:200]
    except (ValueError, AttributeError, UnicodeDecodeError):
        text = body.decode(errors="replace").strip()
        return text.splitlines()[0][:200] if text else ""
