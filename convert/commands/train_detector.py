"""`edge train-detector VOC_DIR --out RUN`: a white-cell detector from Pascal VOC frames (needs the
'train' extra). `edge quantize RUN ...` then makes its int8 bundle."""

from __future__ import annotations

from pathlib import Path

import click

from convert.commands._extras import require_train
from edge.commands._options import (
    cache_option,
    crop_fraction_option,
    out_dir_option,
    seed_option,
    weights_option,
)


@click.command()
@click.argument("voc_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_dir_option("Run directory to write.")
@click.option(
    "--size", type=click.IntRange(96, 640), default=256, show_default=True, help="Model input side (px)."
)
@click.option(
    "--views",
    type=click.IntRange(1, 500),
    default=40,
    show_default=True,
    help="Views of every training frame (the first unaugmented), each run once through the frozen backbone.",
)
@click.option("--epochs", type=click.IntRange(1, 500), default=24, show_default=True)
@seed_option()
@weights_option("Backbone weights: imagenet (the offline torchvision port), none, or a .pth/.npz file.")
@cache_option("Keep the backbone features of the training views here, keyed by data and settings.")
@click.option(
    "--target-recall",
    type=click.FloatRange(0.5, 1.0),
    default=0.995,
    show_default=True,
    help="The operating threshold is the highest score that finds this share of the tune frames' white cells.",
)
@crop_fraction_option(
    0.5,
    "The crop rule the bundle carries, as measured on the classifier's training images "
    "(scripts/measure_cell_fraction.py).",
)
def train_detector(voc_dir, out_dir, **options):
    """Train the white-cell detector on the annotated frames of VOC_DIR (Annotations/ + JPEGImages/).

    \b
    The frames are split by the hash of their names: val (20 %) is only reported, never trained or
    tuned on; the rest is split again into fit and tune (the epoch and the operating threshold).
    Example:
      edge train-detector ../shared/data/bccd-frames --out ../runs/detector --cache ../runs/cache
      edge quantize ../runs/detector --calib ../shared/data/bccd-frames --eval ../shared/data/bccd-frames \\
          --out models/wbc-detector-int8
    """
    require_train("edge train-detector")
    from convert.detector_train import DetectorTrainRequest
    from convert.detector_train import train_detector as run

    run(DetectorTrainRequest(voc=voc_dir, out=out_dir, **options))
