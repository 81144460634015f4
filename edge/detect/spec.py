"""The `detector` section of a detector bundle's manifest, declared once (pydantic, edge/schema.py).

A detector bundle is a bundle like any other (edge/bundle.py: model.tflite, manifest, sha256 of every
file, preprocessing spec, metrics with their split), with `task: "detector"` and this section, which
says how to turn the model's outputs into boxes (decode.py) and boxes into classifier crops (crop.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edge.schema import FrozenSpec

WBC = "wbc"  # the kind of a white cell; other kinds (platelet, rbc) are reported but not classified


class CropRule(FrozenSpec):
    """A detected box -> the square the classifier sees: centred on the box, of side
    max(w, h) / cell_fraction, so the cell fills the same fraction of the crop's side as it did of the
    training images' side (measured on the training sets; `source` says how). Where the square leaves
    the frame it is filled by reflection (or `border_value` for "constant")."""

    cell_fraction: float = Field(default=0.5, ge=0.05, le=1.0)
    border: Literal["reflect", "constant"] = "reflect"
    border_value: int = Field(default=0, ge=0, le=255)
    source: str = "default"


class DetectorSpec(FrozenSpec):
    """How the outputs of a CenterNet-style detector decode (decode.py).

    `heatmap` names the output holding one score map per kind (sigmoid, H' x W' x K), `boxes` the one
    holding the distances from each grid cell's centre to the box's left, top, right and bottom edges,
    in grid cells of `stride` input pixels (H' x W' x 4). `threshold` is the operating point (a box
    counts when its score reaches it), `threshold_source` how it was chosen.
    """

    method: Literal["centernet-ltrb"] = "centernet-ltrb"  # what this edge decodes
    stride: int = Field(default=16, ge=1, le=256)
    heatmap: str = Field(min_length=1)
    boxes: str = Field(min_length=1)
    threshold: float = Field(default=0.5, gt=0, le=1)
    threshold_source: str = "default"
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    max_detections: int = Field(default=50, ge=1, le=10000)
    peak_kernel: int = Field(default=3, ge=1, le=31)  # a peak is the maximum of its k x k neighbourhood
    crop: CropRule = Field(default_factory=CropRule)
    notes: list[str] = Field(default_factory=list)

    @field_validator("peak_kernel")
    @classmethod
    def _odd(cls, k):
        if k % 2 == 0:
            raise ValueError("peak_kernel must be odd (a centred neighbourhood)")
        return k
