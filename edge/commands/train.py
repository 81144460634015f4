"""`edge train`: filled by the training issue."""

from __future__ import annotations

import click

from edge.commands._extras import require_train


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args):
    """Train a classifier from class folders (needs the 'train' extra)."""
    require_train("edge train")
    raise click.ClickException("edge train is not implemented yet")
