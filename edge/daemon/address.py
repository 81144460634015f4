"""Whether a host name or address is this machine's loopback: the page without a token may listen
only there (edge.daemon.config), and a write without a token is taken only from a loopback Host
(edge.daemon.review_api), which a DNS-rebinding page cannot send."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """'localhost', 127.0.0.0/8 or ::1 (bracketed or not); False for any other name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
