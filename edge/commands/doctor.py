"""`edge doctor`: filled by its issue."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def doctor(args):
    """Device command (not implemented yet)."""
    raise click.ClickException("edge doctor is not implemented yet")
