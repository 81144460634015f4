"""`edge quantize`: a trained model -> a TFLite bundle (full-integer int8 by default), with a fidelity report."""

from __future__ import annotations

from pathlib import Path

import click

from edge.commands._extras import require_onnx_export, require_train

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.argument("source", metavar="RUN_DIR|MODEL", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--calib",
    "calib_dir",
    required=True,
    type=_DIR,
    help="Training images (<class>/<image>) to calibrate int8 ranges on, e.g. data/train. Never the eval split.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundle directory to write (model.tflite + manifest.json).",
)
@click.option(
    "--eval",
    "eval_dir",
    type=_DIR,
    help="Labelled held-out images (e.g. data/val): float vs quantized accuracy, agreement, per-class deltas.",
)
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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
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
    "--format",
    type=click.Choice(["tflite", "onnx"]),
    default="tflite",
    show_default=True,
    help="onnx: also write model.onnx (int8 QDQ by onnxruntime on the same calibration images, for the "
    "onnx backend: TensorRT / CUDA on a Jetson). model.tflite is always written.",
)
def quantize(**options):
    """Convert a trained model (an `edge train` run directory or a .keras file) into a bundle.

    \b
    Example:
      edge quantize runs/mobilenetv2 --calib data/blood-5class/train \\
          --eval data/blood-5class/val --out models/mobilenetv2-int8
    """
    require_train("edge quantize")
    if options["format"] == "onnx":
        require_onnx_export("edge quantize --format onnx")
    from convert.quantize import QuantizeRequest, print_summary
    from convert.quantize import quantize as run_quantize

    request = QuantizeRequest(**options)  # the options are named after its fields
    print_summary(run_quantize(request))
