"""`edge weights`: filled by the training issue."""

from __future__ import annotations

import click

from edge.commands._extras import require_train


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def weights(args):
    """Training-host command (needs the 'train' extra)."""
    require_train("edge weights")
    raise click.ClickException("edge weights is not implemented yet")
