"""The two-phase fit on cached activations, and the train / k-fold runs behind `edge train`.

Phase 1 trains the seed-000 head on pooled features of the frozen backbone (computed once per
augmented view). Phase 2 unfreezes the layers above the split layer (BatchNorm stays in inference
mode) and fine-tunes them at a lower learning rate on cached split-layer activations. Early stopping
watches the validation loss and restores the best weights; reported metrics come from those weights.
With --weights none there is nothing pretrained to freeze: the whole network trains on augmented
images (phase 1 is skipped).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from convert.augment import Augment
from convert.models import Arch
from edge.errors import DataError
from edge.preprocess import PreprocessSpec
from edge.schema import Spec, one_line

log = logging.getLogger(__name__)

DEFAULT_FINE_TUNE_EPOCHS = 15


class TrainConfig(Spec):
    """Every choice of a run; saved as config.json, which `edge train --config` replays."""

    data_dir: list[str]  # one or more class-folder roots (sources)
    out: str
    arch: Arch = "mobilenetv2"
    val_dir: list[str] = Field(default_factory=list)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    weights: str = "imagenet"
    img_size: int = 224  # bounded as PreprocessSpec.size
    epochs: int = Field(default=40, ge=0)
    # None: as many as --epochs, at most DEFAULT_FINE_TUNE_EPOCHS
    fine_tune_epochs: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=32, ge=1)
    loss: Literal["ce", "focal"] = "ce"
    class_weight: Literal["none", "balanced"] = "none"
    augment: Augment = "seed"
    views: int = Field(default=6, ge=1)
    fine_tune_from: str = "auto"
    lr: float = Field(default=1e-3, gt=0)
    fine_tune_lr: float = Field(default=1e-4, gt=0)
    patience: int = Field(default=5, ge=0)
    seed: int = Field(default=0, ge=0)
    folds: int = Field(default=0, ge=0)
    cache: str | None = None
    dedupe: bool = False
    max_per_class: int = Field(default=0, ge=0)
    # PreprocessSpec's serialised form without the size (img_size); white balance adds its reference.
    preprocess: dict = Field(default_factory=lambda: PreprocessSpec().to_dict())
    class_map: list[str] = Field(default_factory=list)  # FOLDER=LABEL aliases across sources
    # Colour standardisation (edge.preprocess): "white_balance" measures its reference on the
    # training images and writes it into `preprocess`.
    color: Literal["none", "white_balance"] = "none"
    # Preprocessing version 2 (edge/preprocess_exact.py): bit-exact on every CPU, and with `field_rbc`
    # each cell is cut at that many red-cell diameters of its microscope, whose scale (`scales`: source
    # root -> red-cell diameter in pixels) is measured on its images unless given.
    preprocess_version: Literal[1, 2] = 1
    field_rbc: float | None = Field(default=None, ge=1.0, le=40.0)
    scales: dict[str, float] = Field(default_factory=dict)

    @field_validator("data_dir", "val_dir", mode="before")
    @classmethod
    def _a_list(cls, value):
        # A single folder (as older config.json files hold it) is a list of one.
        if isinstance(value, str):
            return [value]
        return [] if value is None else list(value)

    @model_validator(mode="after")
    def _consistent(self):
        # `--epochs 1` means a one-epoch run: phase 2 follows --epochs unless it is given itself.
        if self.fine_tune_epochs is None:
            self.fine_tune_epochs = min(self.epochs, DEFAULT_FINE_TUNE_EPOCHS)
        if self.folds == 1:
            raise ValueError("folds: 0 (no cross-validation) or at least 2")
        if self.folds and self.val_dir:
            raise ValueError("--folds splits DATA_DIR itself; leave out --val-dir")
        try:
            spec = self.spec()
        except ValidationError as exc:
            raise ValueError(f"preprocess (size from img_size): {one_line(exc)}") from None
        if self.preprocess_version == 2:  # config.json then shows the spec the run really used
            self.preprocess = {k: v for k, v in spec.to_dict().items() if k != "size"}
        return self

    def spec(self) -> PreprocessSpec:
        values = {**self.preprocess, "size": self.img_size}
        if self.preprocess_version == 2:
            # CLAHE tiles of 32 pixels: exact on every CPU (edge.preprocess_exact.tile_is_exact)
            values.update(version=2, clahe_tile_grid=max(1, self.img_size // 32), field_rbc=self.field_rbc)
        return PreprocessSpec.model_validate(values)

    @classmethod
    def from_dict(cls, values: dict, where: str = "train config") -> TrainConfig:
        """The validated config; DataError naming `where` and the first bad key (an unknown one too)."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise DataError(f"{where}: {one_line(exc)}") from None


def _fit_verbose() -> int:
    # Keras's live bar on a terminal; one line per epoch in a log file.
    return 1 if sys.stdout.isatty() else 2


class _EpochLog:
    """Collects per-epoch metrics and wall time of both phases into one history list."""

    def __init__(self):
        self.rows: list[dict] = []

    def callback(self, phase: str):
        import keras

        rows = self.rows

        class Recorder(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                row = {"phase": phase, "epoch": epoch + 1, "seconds": round(time.perf_counter() - self.t0, 2)}
                row.update({k: float(v) for k, v in (logs or {}).items()})
                rows.append(row)

        return Recorder()


def _loss(name: str):
    import keras

    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=2.0)
    return keras.losses.CategoricalCrossentropy()


def _class_weights(targets: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    if mode == "none":
        return None
    counts = np.bincount(targets, minlength=n_classes).astype(float)
    return (len(targets) / (n_classes * np.maximum(counts, 1)))[targets].astype(np.float32)


def _fit(model, train_data, val, epochs, lr, loss, patience, epochs_log: _EpochLog, phase: str):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True, verbose=1
    )
    log.info(f"\n{phase}: up to {epochs} epochs, lr {lr:g}, early stopping on val_loss (patience {patience})")
    model.fit(
        train_data,
        validation_data=val,
        epochs=epochs,
        callbacks=[stop, epochs_log.callback(phase)],
        verbose=_fit_verbose(),
    )
    return stop.best_epoch + 1 if stop.best_weights is not None else epochs


@dataclass
class FitResult:
    model: object  # the complete Keras model (image -> softmax), best weights restored
    top: object
    history: list[dict]
    best_epochs: dict


def pooled_features(built, views: np.ndarray, desc: str = "pooled features") -> np.ndarray:
    """(V, N, C) global-average-pooled outputs of the (still frozen, pretrained) backbone per view."""
    import keras

    from convert.features import predict_arrays

    model = built.model
    boundary = model.get_layer(built.split_layer).output if built.split_layer else model.input
    pooled = keras.Model(boundary, model.get_layer("head_pool").output)
    flat = views.reshape(-1, *views.shape[2:])
    return predict_arrays(pooled, flat, desc=desc).reshape(*views.shape[:2], -1)


def fit_two_phase(
    cfg: TrainConfig, built, train_views, y_train, val_views, y_val, n_classes, pooled=None
) -> FitResult:
    """Phase 1 (head on pooled frozen features) then phase 2 (top of the backbone) on cached views.

    `pooled` = (train, val) pooled features, when the caller already has them (k-fold reuses them).
    """
    import keras

    from convert.features import make_sampler
    from convert.models import set_trainable

    model, top = built.model, built.top
    loss = _loss(cfg.loss)
    yt, yv = keras.utils.to_categorical(y_train, n_classes), keras.utils.to_categorical(y_val, n_classes)
    weights = _class_weights(y_train, n_classes, cfg.class_weight)
    epochs_log = _EpochLog()
    best = {}
    keras.utils.set_random_seed(cfg.seed)
    head_epochs = cfg.epochs if built.pretrained else 0  # a random backbone has no frozen phase
    log.info(
        f"training plan: phase 1 (head) up to {head_epochs} epochs"
        + ("" if built.pretrained else " (skipped: no pretrained backbone)")
        + f", phase 2 (fine-tune) up to {cfg.fine_tune_epochs} epochs"
    )
    if head_epochs > 0:
        # Pooled features of the frozen top: computed once, then the head trains in seconds.
        head = keras.Model(model.get_layer("head_pool").output, model.output)
        if pooled is None:
            feats = pooled_features(built, train_views)
            val_feats = pooled_features(built, val_views[:1], "pooled features (val)")[0]
        else:
            feats, val_feats = pooled
        sampler = make_sampler(feats, yt, cfg.batch_size, cfg.seed, weights)
        best["head"] = _fit(
            head,
            sampler,
            (val_feats, yv),
            cfg.epochs,
            cfg.lr,
            loss,
            cfg.patience,
            epochs_log,
            "phase 1 (head)",
        )
    if cfg.fine_tune_epochs > 0:
        n = set_trainable(top, head_only=False, freeze_bn=built.pretrained)
        lr = cfg.fine_tune_lr if built.pretrained else cfg.lr
        sampler = make_sampler(train_views, yt, cfg.batch_size, cfg.seed + 1, weights)
        what = f"phase 2 (fine-tune {n} layers above {built.split_layer or 'the input'})"
        best["fine_tune"] = _fit(
            top, sampler, (val_views[0], yv), cfg.fine_tune_epochs, lr, loss, cfg.patience, epochs_log, what
        )
    return FitResult(model, top, epochs_log.rows, best)


def evaluate(
    model, arrays: np.ndarray, targets: np.ndarray, labels: list[str], loss_name: str, desc: str
) -> dict:
    """classification_report + loss of `model` on `arrays` (images or activations)."""
    import keras

    from convert.features import predict_arrays
    from edge.metrics import classification_report

    probs = predict_arrays(model, arrays, desc=desc)
    report = classification_report(targets, probs.argmax(1), labels)
    y = keras.utils.to_categorical(targets, len(labels))
    report["loss"] = float(_loss(loss_name)(y, probs))
    report["cross_entropy"] = float(
        -np.mean(np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1)))
    )
    return report
