"""`edge export BUNDLE --format onnx`: add model.onnx to a bundle, for the onnx backend (Jetson GPU)."""

from __future__ import annotations

from pathlib import Path

import click

from convert.commands._extras import require_onnx_export

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.argument("bundle", metavar="BUNDLE", type=_DIR)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="onnx: model.onnx for ONNX Runtime (TensorRT / CUDA on a Jetson, CPU anywhere).",
)
@click.option(
    "--run",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The `edge train` run directory (or .keras model) the bundle came from: export its float Keras model and "
    "quantize it with onnxruntime (symmetric int8, TensorRT-ready). Without it, the bundle's own "
    "int8 model.tflite is converted as it is.",
)
@click.option(
    "--calib",
    "calib_dir",
    type=_DIR,
    default=None,
    help="With --run: the calibration images (default: the folder the manifest's calibration names).",
)
@click.option(
    "--eval",
    "eval_dir",
    type=_DIR,
    default=None,
    help="Labelled images (e.g. data/val): compare model.onnx with the TFLite int8 (and float) model.",
)
@click.option(
    "--calib-count", type=click.IntRange(min=1), default=None, help="With --run: default, the manifest's."
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="With --run: the calibration sample's seed (default, the manifest's).",
)
def export(bundle, format_, run, calib_dir, eval_dir, calib_count, seed):
    """Write model.onnx into BUNDLE, its sha256 in the manifest, and say how it was made.

    \b
    Examples:
      edge export models/mobilenetv2-int8 --format onnx --eval data/blood-5class/val
      edge export models/new-int8 --format onnx --run runs/new --eval data/blood-5class/val
    """
    require_onnx_export("edge export")
    from convert.export import ExportRequest, summary
    from convert.export import export as run_export

    request = ExportRequest(bundle, format_, run, calib_dir, eval_dir, calib_count, seed)
    click.echo(summary(run_export(request)))
