"""`edge adapt BUNDLE SITE_DIR --out NEW_BUNDLE`: calibrate a bundle to one microscope (edge/adapt.py)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edge import site_cells
from edge.adapt import adapt as run_adapt
from edge.bundle import Bundle
from edge.commands._device_options import rbc_px_option
from edge.commands._options import class_map_option, frames_options, out_dir_option, seed_option
from edge.dataset import parse_class_map, printable, scan_labelled
from edge.errors import DataError


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument("site_dir", type=click.Path(path_type=str), required=False)
@out_dir_option("The new bundle's folder (never the bundle itself).")
@frames_options("SITE_DIR")
@click.option(
    "--site-name", default=None, help="The microscope's name on every screen (default: SITE_DIR's name)."
)
@click.option(
    "--holdout",
    type=click.FloatRange(0.0, 0.9),
    default=0.25,
    show_default=True,
    help="Share of each class's cells held back (never fitted) to measure before and after.",
)
@rbc_px_option
@class_map_option()
@seed_option("Seed of the held-back choice and the folds.")
def adapt(
    bundle, site_dir, out_dir, frames_dir, labels_csv, detector, site_name, holdout, rbc_px, class_map, seed
):
    """Calibrate BUNDLE to your microscope from a few labelled cells of it: SITE_DIR/<class>/<image>
    (20 cells of each class you see is plenty; 3 is the least a class needs to be fitted), or whole
    fields with --frames DIR --labels CSV.

    \b
    It finds the microscope's scale (its red cells, then the scale at which your cells are classified
    best), re-fits the model's last layer on the cells' embeddings (held near the bundle's own
    weights), adds your cells' class means to what "known" means for rejection, sets the gate on your
    cells, re-quantizes that layer in the int8 model, writes NEW_BUNDLE with a `site` section and
    scores the held-back cells before and after with it. Runs on the device; no TensorFlow.
    `edge review export` writes the cells a technician decided in SITE_DIR form.

    \b
    Examples:
      edge adapt models/differential-int8 site-cells/ --out models/differential-scope3 --site-name scope3
      edge adapt models/differential-int8 --frames fields/ --labels fields.csv --out models/differential-scope3
      edge eval models/differential-scope3 more-site-cells/
    """
    model = Bundle.load(bundle)
    model.require_task("classifier")
    aliases = parse_class_map(class_map)
    if frames_dir:
        if site_dir or not labels_csv:
            raise click.UsageError("--frames DIR needs --labels CSV, and no SITE_DIR")
        cells = site_cells.from_frames(Path(frames_dir), Path(labels_csv), detector, model.labels, aliases)
    elif site_dir:
        cells = site_cells.from_folder(_site_folder(model, site_dir, aliases))
    else:
        raise click.UsageError("give SITE_DIR, or --frames DIR --labels CSV")
    command = shlex.join(["edge", "adapt", *sys.argv[2:]]) if sys.argv[1:2] == ["adapt"] else ""
    name = site_name or Path(frames_dir or site_dir).resolve().name
    result = run_adapt(model, cells, out_dir, holdout, seed, command, name, rbc_px)
    click.echo("\n".join(result.lines))


def _site_folder(model: Bundle, site_dir: str, aliases):
    site = scan_labelled(site_dir, model.labels, aliases, keep_unknown=True, dedupe=True)
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
    return site
