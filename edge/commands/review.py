"""`edge review`: the review page without the daemon, and reviewed cells out of results.db (see
docs/report.md)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import click

from edge.commands._options import archive_option, results_db_option, token_file_option

REVIEW_LISTEN = "127.0.0.1:8081"  # beside a daemon's page on 8080


@click.group()
def review():
    """Review and sign slides (serve), and the reviewed cells for site calibration (export)."""


@review.command("serve")
@results_db_option
@click.option(
    "--http",
    "listen",
    default=REVIEW_LISTEN,
    show_default=True,
    help="HOST:PORT to serve the page on; port 0 picks a free one. Beyond 127.0.0.1 it needs a token.",
)
@token_file_option("Read the page's token from this file (or set EDGE_RUN_TOKEN), as edge run does.")
@archive_option()
def serve(db, listen, token_file, archive):
    """Serve the review page on a results database, without the daemon: review the flagged cells of
    any slide, sign it, and open its report (/report). The page, the token rules and the sign lock
    are edge run's; no session is started. Ctrl-C or SIGTERM stops it.

    \b
    Examples:
      edge review serve --db results.db                # http://127.0.0.1:8081/review
      edge review serve --db results.db --http 0.0.0.0:8081 --token-file /etc/edge-run/token
    """
    from pydantic import ValidationError

    from edge.commands.run import _read_token
    from edge.daemon.config import ConfigError, HttpConfig, parse_listen
    from edge.daemon.section import error_line
    from edge.lab.review_server import serve as serve_reviews
    from edge.results.reviews import ReviewBook

    token = _read_token(token_file) if token_file else os.environ.get("EDGE_RUN_TOKEN", "")
    try:  # the daemon's rules: a loopback bind, or a token of at least 16 characters
        HttpConfig(listen=listen, token=token)
    except ValidationError as exc:
        raise ConfigError(f"--http: {error_line(exc, HttpConfig)}") from None
    address = parse_listen(listen)
    if address is None:
        raise click.BadParameter("the review page needs an address", param_hint="--http")
    book = ReviewBook.existing(db)
    try:
        server = serve_reviews(book, *address, token=token, archive=archive)
    except OSError as exc:
        book.close()
        raise ConfigError(f"--http: cannot listen on {listen} ({exc.strerror or exc})") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    click.echo(f"review page: {server.url}review (database {db}; Ctrl-C stops)")
    try:
        stop.wait()
    finally:
        server.stop()
        book.close()
    return 0


@review.command("export")
@results_db_option
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Site folder to write."
)
@click.option("--session", "sessions", multiple=True, help="Only this session (repeatable) [default: all].")
@click.option("--unsigned", is_flag=True, help="Also take reviews of slides that are not signed.")
@archive_option()
def export(db, out, sessions, unsigned, archive):
    """Write reviewed cells as OUT/<verified label>/<slide>_<frame>_<crop>.jpg, plus OUT/reviews.csv:
    the input of `edge adapt`, so a site improves its bundle with its own corrections.

    Only signed slides by default; cells reviewed as 'unknown' have no class and are left out, and
    so are reviewed cells whose crop was not archived (listed in reviews.csv).
    """
    from edge.lab.export import export_reviews

    summary = export_reviews(db, out, sessions or None, signed_only=not unsigned, archive=archive)
    click.echo(summary.describe())
    return 0
