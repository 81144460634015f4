"""What `edge quantize` was asked: its options as one request, and the command line that gives it again."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from calibration.fidelity import DEFAULT_THRESHOLD_PP
from calibration.representative import DEFAULT_COUNT, joined
from convert.cache import load_images
from edge.dataset import LabelledImages, load_labelled, parse_class_map, scan_labelled


def _paths(value) -> list[Path]:
    """One folder, several (a list or a click tuple), or none -> a list of Paths."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


@dataclass
class QuantizeRequest:
    """What `edge quantize` was asked. `calib_dir`, `eval_dir` and `reject_holdout` are lists of class-folder
    roots (one or several sources, aliased by `class_map` as in `edge train`)."""

    source: Path
    calib_dir: list[Path]
    out_dir: Path
    eval_dir: list[Path] = field(default_factory=list)
    precision: str = "int8"
    calib_count: int = DEFAULT_COUNT
    debug_layers: bool = False
    threshold_pp: float = DEFAULT_THRESHOLD_PP
    seed: int = 0
    bias_correction: bool = False
    adapt_head: bool = False
    reject: str = "none"  # "mahalanobis": a rejection score for cells unlike the training data
    reject_layer: str = "head_dense"
    reject_quantile: float = 0.99
    reject_holdout: list[Path] = field(default_factory=list)  # cells not trained on, for the threshold
    reject_dims: int = 0  # PCA dimensions before the Mahalanobis distance (0: none)
    format: str = "tflite"  # "onnx": also write model.onnx (the bundle always holds model.tflite)
    crop_fraction: float | None = None  # detector runs: the crop rule's cell fraction, if measured since
    class_map: list[str] = field(default_factory=list)  # FOLDER=LABEL; default: the training run's
    # edge adapt --host: a site's labelled cells (preprocessed), which join the training cells wherever
    # quantization uses them (calibration set, head adaptation, rejection); the cache of preprocessed
    # images; and the command that asked, when it was not `edge quantize`
    site: LabelledImages | None = None
    cache: Path | None = None
    command: str | None = None

    def __post_init__(self):
        self.calib_dir = _paths(self.calib_dir)
        self.eval_dir = _paths(self.eval_dir)
        self.reject_holdout = _paths(self.reject_holdout)
        self.class_map = list(self.class_map or [])

    def images(self, roots: list[Path], labels: list[str]):
        """The labelled images under `roots` (each file once, aliases applied), as `edge train` saw them."""
        return scan_labelled(roots, labels, parse_class_map(self.class_map), dedupe=True)

    def load(self, roots: list[Path], src):
        """`images(roots)` preprocessed as the model expects them, each root at its scale (version 2),
        read from `cache` where it holds them."""
        images = self.images(roots, src.labels)
        scales = src.scales_for(images)
        if self.cache is None:
            return load_labelled(images, src.spec, scales=scales)
        loaded = load_images(
            images.files,
            images.hashes(),
            src.spec,
            self.cache,
            f"preprocess {images.split}",
            views=images.views(scales),
        )
        kept = images.subset(loaded.ok)
        skipped = [f"{f}: {reason}" for f, reason in loaded.skipped]
        return LabelledImages(
            loaded.images,
            kept.targets,
            list(images.labels),
            kept.files,
            images.split,
            kept.fingerprint(),
            skipped,
        )

    def training(self, src) -> LabelledImages:
        """The training cells quantization fits on (head adaptation, rejection): `calib_dir`, and the
        site's cells where there are some."""
        train = self.load(self.calib_dir, src)
        return train if self.site is None else joined(train, self.site)

    def command_line(self) -> str:
        """The command that reproduces this bundle; recorded with every metric."""
        if self.command:
            return self.command
        args = ["edge", "quantize", str(self.source)]
        for flag, roots in (("--calib", self.calib_dir), ("--eval", self.eval_dir)):
            for root in roots:
                args += [flag, str(root)]
        args += ["--out", str(self.out_dir)]
        for pair in self.class_map:
            args += ["--map", pair]
        if self.precision != "int8":
            args += ["--precision", self.precision]
        if self.calib_count != DEFAULT_COUNT:
            args += ["--calib-count", str(self.calib_count)]
        if self.seed:
            args += ["--seed", str(self.seed)]
        if self.bias_correction:
            args += ["--bias-correction"]
        if self.adapt_head:
            args += ["--adapt-head"]
        if self.reject != "none":
            args += ["--reject", self.reject, "--reject-layer", self.reject_layer]
            args += ["--reject-quantile", f"{self.reject_quantile:g}"]
            for root in self.reject_holdout:
                args += ["--reject-holdout", str(root)]
            if self.reject_dims:
                args += ["--reject-dims", str(self.reject_dims)]
        if self.format != "tflite":
            args += ["--format", self.format]
        return shlex.join(args)
