"""manifest.json, declared once: one pydantic model per section, the types the code uses.

A manifest is read on every start of the daemon and by every command (edge/bundle.py loads it with
`Manifest.model_validate(raw, strict=True)`), and a wrong value must be a one-line refusal naming the
field, not a crash later: `"labels": "abcde"` is not five labels, `clahe_tile_grid: 0` is not a grid
(OpenCV would die of a floating-point exception), a file name in `files` may not leave the bundle
directory. The same checks run when the training host builds a manifest, so a bundle that would not
load is never written.

The field order is the order of manifest.json: a manifest written again has the same bytes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edge.detect.spec import DetectorSpec
from edge.preprocess import PreprocessSpec
from edge.schema import Spec

# 2: the labels, preprocessing and flagging rules are sealed in model.tflite (edge/contract.py), and
# the manifest may describe an embedding output and rejection.
SCHEMA_VERSION = 2

_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_Probability = Annotated[float, Field(ge=0, le=1)]


class TensorSpec(Spec):
    """Shape, dtype and (for quantized tensors) scale / zero point of a model input or output."""

    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    dtype: Literal["uint8", "int8", "float32", "float16"]
    scale: float | None = None
    zero_point: int | None = None
    name: str | None = None  # the model's own tensor name, to tell several outputs apart


class Metric(Spec):
    """One measured number, always with the split it was measured on."""

    name: str = Field(min_length=1)
    value: float = Field(allow_inf_nan=False)
    split: str = Field(min_length=1)
    n: int | None = Field(default=None, ge=0)
    command: str | None = None


class Uncertainty(Spec):
    """When a prediction is flagged for human review: top probability or top-1 minus top-2 margin too low."""

    min_confidence: _Probability = 0.6
    min_margin: _Probability = 0.2
    source: str = "default"
    # Set by edge quantize when, on its evaluation split, the rule catches too few of the model's
    # errors: the flag then says little, and everyone who loads the bundle is told.
    warning: str | None = None


class Rejection(Spec):
    """When a cell is unlike anything the model was trained on, it is labelled "unknown".

    The score is the Mahalanobis distance of the cell's embedding (the model's second output) to the
    nearest class mean, under one shared covariance (Lee et al., 2018); `file` holds the class means,
    the shared precision matrix and an optional projection, and `threshold` was set on held-out
    training-distribution cells at quantization (`source` says how)."""

    method: Literal["mahalanobis"]
    threshold: float = Field(gt=0)
    file: str = Field(min_length=1)
    source: str = ""


class Scale(Spec):
    """A microscope's scale: its red cells' diameter in its images' pixels (edge.scale)."""

    rbc_px: float = Field(gt=0, le=5000)
    # how it was found: from red cells, chosen at calibration as the scale at which the site's
    # labelled cells are classified best, or given by hand
    method: Literal["red cells", "calibration", "given"] = "red cells"
    red_cells: int | None = Field(default=None, ge=0)
    images: int | None = Field(default=None, ge=0)


class Checkpoint(Spec):
    cells: int = Field(ge=1)
    limit: float = Field(gt=0, allow_inf_nan=False)


class Gate(Spec):
    """Does a session's first white cells look like the cells this bundle knows? (docs/site.md)

    The statistic is the median rejection score of the first cells; at each checkpoint (cells, limit)
    the microscope is called different when the median of that many cells is above the limit. The
    limits were set on held-out cells the bundle knows (`reference`), so that batches of them are
    called different at most `false_alarm` of the time."""

    statistic: Literal["median_rejection_score"] = "median_rejection_score"
    checkpoints: list[Checkpoint] = Field(min_length=1)
    reference: str = Field(min_length=1)
    false_alarm: _Probability

    @field_validator("checkpoints")
    @classmethod
    def _ascending(cls, checkpoints):
        cells = [c.cells for c in checkpoints]
        if cells != sorted(set(cells)):
            raise ValueError(f"checkpoints must be in ascending order of cells, not {cells}")
        return checkpoints

    @property
    def cells(self) -> int:
        """How many cells the decision "matches" waits for."""
        return self.checkpoints[-1].cells


class Site(Spec):
    """The microscope a calibrated bundle belongs to (edge adapt): who, when, on what, how well."""

    name: str = Field(min_length=1, max_length=120)
    calibrated_at: str = Field(min_length=1)  # ISO 8601, UTC
    method: Literal["device", "host"]
    cells_per_class: dict[str, Annotated[int, Field(ge=0)]]
    held_back: dict = Field(default_factory=dict)  # n, accuracy before/after, false blasts before/after
    scale: Scale | None = None
    fingerprint: _Sha256


class GoldenView(Spec):
    """edge.preprocess.View as the manifest holds it: where the input is cut (version 2)."""

    centre: list[float] | None = Field(default=None, min_length=2, max_length=2)
    rbc_px: float | None = Field(default=None, gt=0, le=5000)
    background: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(
        default=None, min_length=3, max_length=3
    )


class GoldenInput(Spec):
    """One input of the golden check: its arrays are `name` in the golden file (the image, BGR, and
    the model's raw outputs), its preprocessed bytes have the sha256 `preprocessed`, and `top` is the
    model's top class (classifiers, when it leads by more than twice the tolerance; else None)."""

    name: str = Field(min_length=1, max_length=60)
    view: GoldenView = Field(default_factory=GoldenView)
    preprocessed: _Sha256
    top: int | None = Field(default=None, ge=0)


class Golden(Spec):
    """Does a device compute what the machine that made the bundle computed? (edge/golden.py)

    A few inputs made by the project (edge.synthetic, fixed seeds) with their preprocessed hashes and
    the model's raw int8 outputs, made on `made_on` (platform.machine()) with OpenCV `opencv`. The
    device must preprocess them byte for byte (version 1: only on the same CPU and OpenCV) and its
    outputs must lie within `tolerance_steps` quantization steps, with the same top class."""

    file: str = Field(default="golden.npz", min_length=1)
    inputs: list[GoldenInput] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)  # which model outputs the file holds, by role
    tolerance_steps: int = Field(ge=0, le=255)
    made_on: str = Field(min_length=1)
    opencv: str = Field(min_length=1)


class Manifest(Spec):
    labels: list[str] = Field(min_length=1)
    input: TensorSpec
    output: TensorSpec
    preprocess: PreprocessSpec
    # Records, not rules: what made the model, kept as written.
    model: dict = Field(default_factory=dict)  # architecture, weights, precision, ...
    training: dict = Field(default_factory=dict)  # data fingerprint, splits, run config
    calibration: dict = Field(default_factory=dict)
    metrics: list[Metric] = Field(default_factory=list)
    uncertainty: Uncertainty = Field(default_factory=Uncertainty)
    edgetpu: dict | None = None
    embedding: TensorSpec | None = None  # the second output, for rejection
    rejection: Rejection | None = None
    files: dict[str, _Sha256] = Field(default_factory=dict)  # file name -> sha256, filled by write_bundle
    writer: dict = Field(default_factory=dict)
    schema_version: Literal[2] = SCHEMA_VERSION
    # "detector": `labels` are the kinds of object found (wbc, ...) and `detector` says how its
    # outputs decode into boxes (edge/detect/spec.py). Manifests written before it are classifiers.
    task: Literal["classifier", "detector"] = "classifier"
    detector: DetectorSpec | None = None
    # A classifier's check of a new microscope (edge/site.py), and the microscope it was calibrated to.
    gate: Gate | None = None
    site: Site | None = None
    # What the device checks it computes alike (edge/golden.py), made with the bundle.
    golden: Golden | None = None

    omitted_at_default = ("gate", "site", "golden")

    @field_validator("labels", mode="before")
    @classmethod
    def _a_list(cls, labels):
        if not isinstance(labels, (list, tuple)):
            raise ValueError(f"expected a list of names, got {type(labels).__name__} {labels!r}")
        return list(labels)

    @field_validator("labels")
    @classmethod
    def _distinct_names(cls, labels):
        if any(not name.strip() for name in labels):
            raise ValueError("a label may not be empty")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels repeat: {labels}")
        return labels

    @field_validator("files")
    @classmethod
    def _inside_the_bundle(cls, files):
        for name in files:
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"{name!r} is not a file name inside the bundle")
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
        if self.rejection is not None and self.embedding is None:
            raise ValueError("rejection needs the model's embedding output (embedding)")
        if self.gate is not None and self.rejection is None:
            raise ValueError("the gate reads rejection scores: a gate needs rejection")
        return self

    def metric(self, name: str, split: str | None = None) -> Metric | None:
        for m in self.metrics:
            if m.name == name and (split is None or m.split == split):
                return m
        return None
