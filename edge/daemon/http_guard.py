"""waitress, guarded against connections that hold the page without asking for it (slow headers, idle
sockets): issue 24, item 4.

waitress alone times a connection out only when it has been silent for `channel_timeout`, so a client
that sends one header byte every few seconds keeps its connection for ever; and once
`connection_limit` sockets are open it stops accepting, so about 1,000 such connections (or 1,100
idle ones) made the page unreachable for everyone. Here:

- a connection has REQUEST_TIMEOUT_S to deliver a whole request, counted from when it opened or from
  its last answer, however many bytes it drips; then it is closed;
- a new connection is always accepted: when its client already holds PER_CLIENT connections, or the
  server MAX_CONNECTIONS, the one that has waited longest without a request being served is closed
  to make room (a browser's request arrives at once, so it is never the longest waiting);
- the process may open enough files for that (RLIMIT_NOFILE raised to its hard limit, up to 4,096).
"""

from __future__ import annotations

import resource
import time

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

REQUEST_TIMEOUT_S = 10  # to send a whole request (a browser needs milliseconds)
PER_CLIENT = 64  # connections from one address (a browser opens about 6)
MAX_CONNECTIONS = 1000
RESERVED_FILES = 128  # for the database, the archive, the camera, ...
WANTED_FILES = 4096


class GuardedChannel(HTTPChannel):
    """A waitress channel that knows its client and since when it has waited for a request."""

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        self.client = addr[0] if isinstance(addr, tuple) else str(addr)
        self.waiting_since = time.monotonic()
        server.admit(self)

    def service(self):
        self.waiting_since = time.monotonic()  # being served, not waiting
        try:
            super().service()
        finally:
            self.waiting_since = time.monotonic()  # the next request's time starts now

    @property
    def idle(self) -> bool:
        """No request being served and no answer still to send: only reading, or nothing at all."""
        return not self.requests and not self.total_outbufs_len


class GuardedServer(TcpWSGIServer):
    channel_class = GuardedChannel

    def __init__(self, application, adj: Adjustments, max_connections: int, per_client: int, **kw):
        self.max_connections, self.per_client = max_connections, per_client
        self.refused = 0  # connections closed to make room, or because nothing could be
        super().__init__(application, adj=adj, **kw)

    def admit(self, channel: GuardedChannel) -> None:
        """Make room for `channel`: close the longest-waiting idle connection of its client, or of
        anyone, when either is at its limit; close `channel` itself only when nothing else can go."""
        others = [c for c in self.active_channels.values() if c is not channel]
        same = [c for c in others if getattr(c, "client", None) == channel.client]
        for pool, limit in ((same, self.per_client), (others, self.max_connections)):
            if len(pool) >= limit:
                self.refused += 1
                idle = [c for c in pool if c.idle]
                victim = min(idle, key=lambda c: c.waiting_since) if idle else channel
                victim.handle_close()
                if victim is channel:
                    return

    def maintenance(self, now):
        """waitress's idle time-out, and the request time-out of this module."""
        super().maintenance(now)
        cutoff = time.monotonic() - REQUEST_TIMEOUT_S
        for channel in list(self.active_channels.values()):
            if channel.idle and channel.waiting_since < cutoff:
                channel.will_close = True  # closed by the serving loop, as waitress closes idle ones


def open_files_limit() -> int:
    """The soft limit on open files, raised towards WANTED_FILES where the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return WANTED_FILES if soft == resource.RLIM_INFINITY else soft


def create_guarded_server(app, host: str, port: int, threads: int, **options) -> GuardedServer:
    """A waitress server on one address (what waitress.create_server builds for a single listen),
    with GuardedChannel connections."""
    max_connections = max(16, min(MAX_CONNECTIONS, open_files_limit() - RESERVED_FILES))
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        # the guard keeps the count below this, so waitress itself never stops accepting
        connection_limit=max_connections + 64,
        cleanup_interval=1,
        **options,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    return GuardedServer(
        app,
        adj,
        max_connections,
        PER_CLIENT,
        map={},
        dispatcher=dispatcher,
        sockinfo=adj.listen[0],
    )
