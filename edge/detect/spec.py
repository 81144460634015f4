"""The `detector` section of a detector bundle's manifest, parsed once into dataclasses.

A detector bundle is a bundle like any other (edge/bundle.py: model.tflite, manifest, sha256 of every
file, preprocessing spec, metrics with their split), with `task: "detector"` and this section, which
says how to turn the model's outputs into boxes (decode.py) and boxes into classifier crops (crop.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

WBC = "wbc"  # the kind of a white cell; other kinds (platelet, rbc) are reported but not classified
BORDERS = ("reflect", "constant")


def _from_dict(cls, data: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys: {unknown}")
    return cls(**data)


@dataclass(frozen=True)
class CropRule:
    """A detected box -> the square the classifier sees: centred on the box, of side
    max(w, h) / cell_fraction, so the cell fills the same fraction of the crop's side as it did of the
    training images' side (measured on the training sets; `source` says how). Where the square leaves
    the frame it is filled by reflection (or `border_value` for "constant")."""

    cell_fraction: float = 0.5
    border: str = "reflect"
    border_value: int = 0
    source: str = "default"

    def __post_init__(self):
        if not 0.05 <= float(self.cell_fraction) <= 1.0:
            raise ValueError(f"crop cell_fraction must be in [0.05, 1], not {self.cell_fraction}")
        if self.border not in BORDERS:
            raise ValueError(f"crop border must be one of {BORDERS}, not {self.border!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CropRule:
        return _from_dict(cls, data, "crop")


@dataclass(frozen=True)
class DetectorSpec:
    """How the outputs of a CenterNet-style detector decode (decode.py).

    `heatmap` names the output holding one score map per kind (sigmoid, H' x W' x K), `boxes` the one
    holding the distances from each grid cell's centre to the box's left, top, right and bottom edges,
    in grid cells of `stride` input pixels (H' x W' x 4). `threshold` is the operating point (a box
    counts when its score reaches it), `threshold_source` how it was chosen.
    """

    method: str = "centernet-ltrb"
    stride: int = 16
    heatmap: str = ""
    boxes: str = ""
    threshold: float = 0.5
    threshold_source: str = "default"
    nms_iou: float = 0.5
    max_detections: int = 50
    peak_kernel: int = 3  # a peak is the maximum of its k x k neighbourhood
    crop: CropRule = field(default_factory=CropRule)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.method != "centernet-ltrb":
            raise ValueError(f"unknown detector method {self.method!r} (this edge decodes centernet-ltrb)")
        if int(self.stride) < 1:
            raise ValueError(f"detector stride must be >= 1, not {self.stride}")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"detector threshold must be in (0, 1], not {self.threshold}")
        if not 0.0 < float(self.nms_iou) <= 1.0:
            raise ValueError(f"detector nms_iou must be in (0, 1], not {self.nms_iou}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["crop"] = self.crop.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DetectorSpec:
        data = dict(data)
        crop = CropRule.from_dict(data.pop("crop", {}))
        return _from_dict(cls, {**data, "crop": crop}, "detector")
