"""`edge adapt BUNDLE SITE_DIR --out NEW_BUNDLE`: calibrate a bundle to one microscope, on the device
(edge/adapt.py) or, with --host --run RUN, on the training host (a plugin: see HOST_CALIBRATION)."""

from __future__ import annotations

import shlex
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click

from edge import site_cells
from edge.adapt import SiteRequest
from edge.adapt import adapt as run_adapt
from edge.bundle import Bundle
from edge.commands._device_options import frames_detector, rbc_px_option
from edge.commands._options import cache_option, class_map_option, frames_options, out_dir_option, seed_option
from edge.dataset import parse_class_map, printable, scan_labelled
from edge.errors import DataError, MissingExtraError

# The host path is the training side's (it needs TensorFlow), registered in pyproject.toml under this
# entry-point group and name as the training commands are under "edge.commands": edge never names it,
# and loads it only when --host is asked.
HOST_CALIBRATION = ("edge.adapt", "host")
HOST_EPOCHS = 8


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
@click.option(
    "--host",
    is_flag=True,
    help="Calibrate on the training host instead (needs --run and the train extra): fine-tune the upper "
    "backbone on your cells and replayed training cells, then re-quantize as edge quantize did.",
)
@click.option(
    "--run",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --host: the `edge train` run BUNDLE was quantized from (its model.keras and config.json).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 100),
    default=HOST_EPOCHS,
    show_default=True,
    help="With --host: fine-tuning epochs.",
)
@cache_option("With --host: keep the preprocessed training images and activations here for the next run.")
def adapt(
    bundle,
    site_dir,
    out_dir,
    frames_dir,
    labels_csv,
    detector,
    site_name,
    holdout,
    rbc_px,
    class_map,
    seed,
    host,
    **host_options,
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
    With --host --run RUN (on the training host, the train extra): the same cells, split and scale, then
    the upper backbone is fine-tuned on your cells (augmented) together with replayed training cells,
    the model re-quantized as `edge quantize` made BUNDLE (calibration, --adapt-head, rejection, gate,
    model.onnx where BUNDLE had one) and the held-back cells scored before and after.

    \b
    Examples:
      edge adapt models/differential-int8 site-cells/ --out models/differential-scope3 --site-name scope3
      edge adapt models/differential-int8 --frames fields/ --labels fields.csv --out models/differential-scope3
      edge adapt models/differential-int8 site-cells/ --host --run runs/differential --out models/differential-scope3
      edge eval models/differential-scope3 more-site-cells/
    """
    if host != bool(host_options["run"]):
        raise click.UsageError("--host needs --run RUN (the training run of BUNDLE), and --run needs --host")
    calibrate = _host_calibration() if host else None  # before the cells: a missing extra fails first
    model = Bundle.load(bundle)
    model.require_task("classifier")
    cells = _read_cells(model, site_dir, frames_dir, labels_csv, detector, parse_class_map(class_map))
    command = shlex.join(["edge", "adapt", *sys.argv[2:]]) if sys.argv[1:2] == ["adapt"] else ""
    name = site_name or Path(frames_dir or site_dir).resolve().name
    request = SiteRequest(holdout, seed, command, name, rbc_px)
    if calibrate is None:
        result = run_adapt(model, cells, out_dir, request)
    else:
        result = calibrate(model, cells, out_dir, request, **host_options)
    click.echo("\n".join(result.lines))


def _read_cells(model: Bundle, site_dir, frames_dir, labels_csv, detector, aliases) -> site_cells.SiteCells:
    if frames_dir:
        if site_dir or not labels_csv:
            raise click.UsageError("--frames DIR needs --labels CSV, and no SITE_DIR")
        finder = frames_detector(detector)
        return site_cells.from_frames(Path(frames_dir), Path(labels_csv), finder, model.labels, aliases)
    if site_dir:
        return site_cells.from_folder(_site_folder(model, site_dir, aliases))
    raise click.UsageError("give SITE_DIR, or --frames DIR --labels CSV")


def _host_calibration():
    """The host path's function: the entry point is a factory that checks the train extra (one line
    naming it when missing) and returns the function."""
    group, name = HOST_CALIBRATION
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        raise MissingExtraError("edge adapt --host", "train", f"the host calibration ('{group}' '{name}')")
    return found[0].load()()


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
