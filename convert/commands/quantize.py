"""`edge quantize`: a trained model -> a TFLite bundle (full-integer int8 by default), with a fidelity report."""

from __future__ import annotations

from pathlib import Path

import click

from convert.commands._extras import require_onnx_export, require_train
from edge.commands._options import (
    class_map_option,
    crop_fraction_option,
    out_dir_option,
    seed_option,
    verbose_option,
)

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.argument("source", metavar="RUN_DIR|MODEL", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--calib",
    "calib_dir",
    required=True,
    multiple=True,
    type=_DIR,
    help="Training images (<class>/<image>) to calibrate int8 ranges on, e.g. data/train. Never the eval "
    "split. Repeat for several sources, as given to `edge train`.",
)
@out_dir_option("Bundle directory to write (model.tflite + manifest.json).")
@click.option(
    "--eval",
    "eval_dir",
    multiple=True,
    type=_DIR,
    help="Labelled held-out images (e.g. data/val): float vs quantized accuracy, agreement, per-class "
    "deltas. Repeatable.",
)
@class_map_option("Class folder alias across sources (repeatable) [default: the training run's --map].")
@click.option(
    "--precision",
    type=click.Choice(["int8", "float16", "float32"]),
    default="int8",
    show_default=True,
    help="int8: full-integer, uint8 in/out (CPU, Edge TPU). float16: for GPU-class devices.",
)
@click.option(
    "--calib-count",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Calibration images, split evenly across classes.",
)
@click.option(
    "--debug-layers",
    is_flag=True,
    help="Run TensorFlow's quantization debugger and list the layers int8 hurts most (slow).",
)
@click.option(
    "--threshold",
    "threshold_pp",
    type=float,
    default=1.0,
    show_default=True,
    help="Warn loudly when the quantized model loses more than this many percentage points of accuracy.",
)
@seed_option("Seed of the calibration sample.")
@click.option(
    "--bias-correction",
    is_flag=True,
    help="int8: measure the mean int8-vs-float logit shift on the calibration images and remove it "
    "from the last layer's bias before converting (one extra conversion).",
)
@click.option(
    "--adapt-head",
    is_flag=True,
    help="int8: fine-tune the classifier head on float and int8-backbone features of the --calib "
    "folder's images, so its decisions survive int8 (a few minutes; backbone unchanged).",
)
@click.option(
    "--reject",
    type=click.Choice(["none", "mahalanobis"]),
    default="none",
    show_default=True,
    help="mahalanobis: give the model its embedding as a second output and store what the device needs "
    "to label cells unlike the training data 'unknown' (Mahalanobis distance to the nearest class).",
)
@click.option(
    "--reject-layer",
    default="head_dense",
    show_default=True,
    help="The layer whose output is the embedding (edge train's head: head_pool 1280-d or head_dense 128-d).",
)
@click.option(
    "--reject-quantile",
    type=click.FloatRange(0.5, 1.0),
    default=0.99,
    show_default=True,
    help="The threshold is this quantile of the held-out cells' scores: the share of such cells kept.",
)
@click.option(
    "--reject-holdout",
    multiple=True,
    type=_DIR,
    help="Training-distribution cells the model did not train on (e.g. data/val) to set the threshold on; "
    "without it, the training images themselves (new cells then score higher: more are rejected).",
)
@click.option(
    "--reject-dims",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Project the embedding on this many principal components first (0: no projection).",
)
@click.option(
    "--format",
    type=click.Choice(["tflite", "onnx"]),
    default="tflite",
    show_default=True,
    help="onnx: also write model.onnx (int8 QDQ by onnxruntime on the same calibration images, for the "
    "onnx backend: TensorRT / CUDA on a Jetson). model.tflite is always written.",
)
@verbose_option("Also show TensorFlow's own log and the converter's output.")
@crop_fraction_option(
    None,
    "Detector runs: the crop rule's cell fraction, as scripts/measure_cell_fraction.py measured it on the "
    "classifier's training images [default: the run's].",
)
def quantize(verbose, **options):
    """Convert a trained model (an `edge train` run directory or a .keras file) into a bundle.

    \b
    Example:
      edge quantize runs/mobilenetv2 --calib data/blood-5class/train \\
          --eval data/blood-5class/val --out models/mobilenetv2-int8

    \b
    A detector run (`edge train-detector`) takes its VOC folder as --calib (its training frames
    calibrate) and --eval (its val frames are scored), e.g.
      edge quantize runs/detector --calib data/bccd-frames --eval data/bccd-frames \\
          --out models/wbc-detector-int8
    """
    require_train("edge quantize", verbose)
    if options["format"] == "onnx":
        require_onnx_export("edge quantize --format onnx", verbose)
    from convert.detector_quantize import is_detector_run, quantize_detector
    from convert.quantize import QuantizeRequest, summary, warnings
    from convert.quantize import quantize as run_quantize

    request = QuantizeRequest(**options)  # the options are named after its fields
    if is_detector_run(request.source):  # an `edge train-detector` run: --calib/--eval are VOC folders
        click.echo("\n".join(quantize_detector(request).lines))
        return
    if request.crop_fraction is not None:
        raise click.UsageError("--crop-fraction applies to detector runs (edge train-detector)")
    result = run_quantize(request)
    click.echo(summary(result))
    for warning in warnings(result):
        click.echo(warning, err=True)
