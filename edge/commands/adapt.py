"""`edge adapt BUNDLE SITE_DIR --out NEW_BUNDLE`: calibrate a bundle to one microscope (edge/adapt.py)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edge.adapt import adapt as run_adapt
from edge.bundle import Bundle
from edge.commands._options import class_map_option, out_dir_option, seed_option
from edge.dataset import parse_class_map, printable, scan_labelled
from edge.errors import DataError


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument("site_dir", type=click.Path(path_type=str))
@out_dir_option("The new bundle's folder (never the bundle itself).")
@click.option(
    "--holdout",
    type=click.FloatRange(0.0, 0.9),
    default=0.25,
    show_default=True,
    help="Share of each class's cells held back (never fitted) to measure before and after.",
)
@class_map_option()
@seed_option("Seed of the held-back choice and the folds.")
def adapt(bundle, site_dir, out_dir, holdout, class_map, seed):
    """Re-fit BUNDLE to your microscope from SITE_DIR/<class>/<image>: a few labelled cells of each
    class you see (20 a class is plenty; 3 is the least a class needs to be fitted).

    \b
    It re-fits the model's last layer on the cells' embeddings (held near the bundle's own weights),
    adds your cells' class means to what "known" means for rejection, re-quantizes that layer in the
    int8 model, writes NEW_BUNDLE and scores the held-back cells before and after with it. Runs on the
    device; no TensorFlow. `edge review export` writes the cells a technician corrected in this form.

    \b
    Example:
      edge adapt models/differential-int8 site-cells/ --out models/differential-int8-scope3
      edge eval models/differential-int8-scope3 more-site-cells/
    """
    model = Bundle.load(bundle)
    model.require_task("classifier")
    site = scan_labelled(site_dir, model.labels, parse_class_map(class_map), keep_unknown=True, dedupe=True)
    for folder in site.unknown_folders:
        click.echo(
            f"error: {Path(site_dir) / folder}: not a class of {model.path.name} "
            f"({', '.join(model.labels)}); rename it or give --map {folder}=LABEL",
            err=True,
        )
    if site.unknown_folders:
        raise DataError(f"{site_dir}: {len(site.unknown_folders)} folder(s) match no class of the bundle")
    for path in site.ignored:
        click.echo(f"warning: {printable(path)}: not an image file (by suffix), ignored", err=True)
    command = shlex.join(["edge", "adapt", *sys.argv[2:]]) if sys.argv[1:2] == ["adapt"] else ""
    result = run_adapt(model, site, out_dir, holdout, seed, command)
    click.echo("\n".join(result.lines))
