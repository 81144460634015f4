"""`edge review`: reviewed cells out of results.db (see docs/report.md)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def review():
    """Reviewed cells: what technicians confirmed or reclassified on the review page."""


@review.command("export")
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The results database."
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Site folder to write."
)
@click.option("--session", "sessions", multiple=True, help="Only this session (repeatable) [default: all].")
@click.option("--unsigned", is_flag=True, help="Also take reviews of slides that are not signed.")
@click.option(
    "--archive",
    type=click.Path(file_okay=False, path_type=Path),
    help="Flagged-image archive [default: each session's, or flagged/ beside the database].",
)
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
