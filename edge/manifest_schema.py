"""The manifest schema: every field of manifest.json validated (pydantic) before it becomes the
dataclasses in edge/bundle.py.

A manifest is read on every start of the daemon and by every command, and a wrong value must be a
one-line refusal naming the field, not a crash later: `"labels": "abcde"` is not five labels,
`clahe_tile_grid: 0` is not a grid (OpenCV would die of a floating-point exception), a file name in
`files` may not leave the bundle directory.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TensorSpecModel(_Strict):
    shape: list[int] = Field(min_length=1)
    dtype: Literal["uint8", "int8", "float32", "float16"]
    scale: float | None = None
    zero_point: int | None = None
    name: str | None = None

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape):
        if any(d < 1 for d in shape):
            raise ValueError("every dimension must be at least 1")
        return shape


class PreprocessModel(_Strict):
    size: int = Field(ge=16, le=2048)
    interpolation: Literal["area", "linear", "cubic", "nearest"] = "linear"
    antialias: bool = True
    aspect: Literal["center_crop", "pad", "stretch"] = "center_crop"
    color_order: Literal["RGB", "BGR"] = "RGB"
    contrast: Literal["clahe", "none"] = "clahe"
    clahe_clip_limit: float = Field(default=2.0, gt=0, le=100)
    clahe_tile_grid: int = Field(default=8, ge=1, le=64)
    pad_value: int = Field(default=0, ge=0, le=255)
    color: Literal["none", "white_balance"] = "none"
    white_reference: list[float] | None = Field(default=None, min_length=3, max_length=3)

    @field_validator("clahe_clip_limit", mode="before")
    @classmethod
    def _number(cls, v):
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("white_reference", mode="before")
    @classmethod
    def _numbers(cls, v):
        if isinstance(v, list):
            v = [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
            if any(isinstance(x, float) and not 1.0 <= x <= 255.0 for x in v):
                raise ValueError("every value must be in [1, 255]")
        return v

    @model_validator(mode="after")
    def _reference(self):
        if (self.color == "white_balance") != (self.white_reference is not None):
            raise ValueError("color white_balance and white_reference go together")
        return self


class MetricModel(_Strict):
    name: str = Field(min_length=1)
    value: float
    split: str = Field(min_length=1)
    n: int | None = Field(default=None, ge=0)
    command: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _finite(cls, v):
        v = float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class UncertaintyModel(_Strict):
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    min_margin: float = Field(default=0.2, ge=0, le=1)
    source: str = "default"
    warning: str | None = None

    @field_validator("min_confidence", "min_margin", mode="before")
    @classmethod
    def _number(cls, v):
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class RejectionModel(_Strict):
    method: Literal["mahalanobis"]
    threshold: float = Field(gt=0)
    file: str
    source: str = ""

    @field_validator("threshold", mode="before")
    @classmethod
    def _number(cls, v):
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class CropRuleModel(_Strict):
    cell_fraction: float = Field(default=0.5, ge=0.05, le=1.0)
    border: Literal["reflect", "constant"] = "reflect"
    border_value: int = Field(default=0, ge=0, le=255)
    source: str = "default"

    @field_validator("cell_fraction", mode="before")
    @classmethod
    def _number(cls, v):
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class DetectorModel(_Strict):
    """A detector bundle's decoding (edge/detect/spec.py): what turns its outputs into boxes."""

    method: Literal["centernet-ltrb"] = "centernet-ltrb"
    stride: int = Field(default=16, ge=1, le=256)
    heatmap: str = Field(min_length=1)
    boxes: str = Field(min_length=1)
    threshold: float = Field(default=0.5, gt=0, le=1)
    threshold_source: str = "default"
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    max_detections: int = Field(default=50, ge=1, le=10000)
    peak_kernel: int = Field(default=3, ge=1, le=31)
    crop: CropRuleModel = Field(default_factory=CropRuleModel)
    notes: list[str] = Field(default_factory=list)

    @field_validator("threshold", "nms_iou", mode="before")
    @classmethod
    def _number(cls, v):
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("peak_kernel")
    @classmethod
    def _odd(cls, k):
        if k % 2 == 0:
            raise ValueError("peak_kernel must be odd (a centred neighbourhood)")
        return k


class ManifestModel(_Strict):
    schema_version: Literal[2]
    task: Literal["classifier", "detector"] = "classifier"
    detector: DetectorModel | None = None
    labels: list[str] = Field(min_length=1)
    input: TensorSpecModel
    output: TensorSpecModel
    preprocess: PreprocessModel
    model: dict = Field(default_factory=dict)
    training: dict = Field(default_factory=dict)
    calibration: dict = Field(default_factory=dict)
    metrics: list[MetricModel] = Field(default_factory=list)
    uncertainty: UncertaintyModel = Field(default_factory=UncertaintyModel)
    edgetpu: dict | None = None
    embedding: TensorSpecModel | None = None
    rejection: RejectionModel | None = None
    files: dict[str, str] = Field(min_length=1)
    writer: dict = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels):
        if any(not name.strip() for name in labels):
            raise ValueError("a label may not be empty")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels repeat: {labels}")
        return labels

    @field_validator("files")
    @classmethod
    def _files(cls, files):
        for name, digest in files.items():
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"{name!r} is not a file name inside the bundle")
            if (
                not isinstance(digest, str)
                or len(digest) != 64
                or any(c not in "0123456789abcdef" for c in digest)
            ):
                raise ValueError(f"{name}: {digest!r} is not a sha256 hex digest")
        return files

    @model_validator(mode="after")
    def _consistent(self):
        if (self.task == "detector") != (self.detector is not None):
            raise ValueError("task detector and a detector section go together")
        n_out = self.output.shape[-1]
        if n_out != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but the model output has {n_out} classes")
        shape = self.input.shape
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"input: expected N x H x W x 3, got {shape}")
        if shape[1:3] != [self.preprocess.size] * 2 and self.preprocess.aspect != "stretch":
            raise ValueError(
                f"preprocess.size {self.preprocess.size} does not fit the model input {shape[1]}x{shape[2]}"
            )
        if self.rejection is not None:
            if self.rejection.file not in self.files:
                raise ValueError(f"rejection.file {self.rejection.file} is not listed in files")
            if self.embedding is None:
                raise ValueError("rejection needs the model's embedding output (embedding)")
        return self


def _where(error: dict) -> str:
    return ".".join(str(p) for p in error["loc"]) or "manifest"


def validate(raw: dict) -> ManifestModel:
    """The validated manifest; ValueError with one line naming the first bad field."""
    if not isinstance(raw.get("labels", []), list):
        raise ValueError(
            f"labels: expected a list of names, got {type(raw['labels']).__name__} {raw['labels']!r}"
        )
    try:
        return ManifestModel.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        got = first.get("input")
        shown = (
            f" (got {got!r})" if got is not None and not isinstance(got, dict) and len(repr(got)) < 60 else ""
        )
        more = f"; {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
        raise ValueError(f"{_where(first)}: {message}{shown}{more}") from None
