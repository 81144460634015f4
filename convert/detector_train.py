"""`edge train-detector VOC_DIR --out RUN`: the white-cell detector, trained on cached backbone features.

Steps, each printed as it runs:

    split     the VOC frames by the sha256 of their names (convert/detector_splits.py): val (20 %) is
              never trained or tuned on; the rest is split again, the same way with another salt, into
              fit (trained on) and tune (the epoch and the operating threshold are chosen on it)
    views     `views` augmented views of every fit frame (convert/detector_data.py), through the
              device's preprocessing, and their grid targets
    features  the frozen MobileNetV2 bottom (offline ImageNet port) run once per view, cached float16
    fit       the head (convert/detector_fit.py): focal loss on the score map, GIoU on the box
              distances (Adam, cosine decay);
              after each epoch the tune frames are decoded by edge.detect.decode, the device's own code,
              and scored by edge.detect.evaluate; the best epoch by tune AP@0.5:0.95 is kept
    threshold the highest score that still finds `target_recall` of the tune frames' white cells
    report    model.keras (the whole detector, image -> outputs), config.json (task "detector", the
              preprocessing, the decoding spec, the split with every file name), report.json (fit,
              tune and val numbers of the float model), pr_val.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from convert.detector_data import (
    VIEW_KINDS,
    build_photometric,
    frame_boxes,
    grid_targets,
    make_view,
    plain_view,
)
from convert.detector_fit import PROVISIONAL, Scored, evaluate_frames, fit_head
from convert.detector_model import (
    BOXES,
    HEAT,
    STRIDE,
    DetectorModelSpec,
    build_bottom,
    build_detector,
    build_head,
)
from convert.detector_splits import TUNE_METHOD, Splits, load_frames, make_splits, voc_fingerprint
from convert.features import make_predictor
from convert.weights import resolve_weights
from edge.detect.evaluate import operating_threshold
from edge.detect.pr_plot import write_pr_png
from edge.detect.spec import WBC, CropRule, DetectorSpec
from edge.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


@dataclass
class DetectorTrainRequest:
    voc: Path
    out: Path
    size: int = 256
    views: int = 40
    epochs: int = 24
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    weights: str = "imagenet"
    cache: Path | None = None
    target_recall: float = 0.995
    width: int = 128
    blocks: int = 2
    crop_fraction: float = 0.5  # the crop rule the bundle will carry (scripts/measure_cell_fraction.py)

    def command_line(self) -> str:
        args = ["edge", "train-detector", str(self.voc), "--out", str(self.out)]
        for name, default in (
            ("size", 256),
            ("views", 40),
            ("epochs", 24),
            ("seed", 0),
            ("crop_fraction", 0.5),
        ):
            value = getattr(self, name)
            if value != default:
                args += [
                    f"--{name.replace('_', '-')}",
                    f"{value:g}" if isinstance(value, float) else str(value),
                ]
        if self.cache:
            args += ["--cache", str(self.cache)]
        return shlex.join(args)


def detector_preprocess(size: int) -> PreprocessSpec:
    """Letterbox (a 4:3 field keeps its shape, padded to a square), bilinear after 2x area steps, no
    CLAHE: colour augmentation stands in for it, and it saves the device ~1 ms a frame."""
    return PreprocessSpec(size=size, aspect="pad", contrast="none", pad_value=0)


def _views(images, frames, spec, n_views, seed):
    """(uint8 views, heat, heat weight, box distances, box weight) for n_views views of each frame;
    view 0 of each frame is the frame itself."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    photometric = build_photometric(spec.size, seed)
    xs, targets = [], []
    with tqdm(total=n_views * len(frames), desc="views", unit="view") as bar:
        for v in range(n_views):
            for image, frame in zip(images, frames, strict=True):
                if v == 0:
                    view = plain_view(image, frame, spec)
                else:
                    boxes, ignore = frame_boxes(frame)
                    view = make_view(image, boxes, ignore, spec, rng, photometric)
                xs.append(view.image)
                targets.append(grid_targets(view, spec.size, STRIDE))
                bar.update(1)
    columns = [np.stack(c) for c in zip(*targets, strict=True)]
    return np.stack(xs), *columns


def _features(bottom, images: np.ndarray, desc: str, cache: Path | None, key: str) -> np.ndarray:
    from tqdm import tqdm

    path = cache / f"detector-features-{key}.npy" if cache else None
    if path is not None and path.exists():
        log.info(f"{desc}: features read from cache {path}")
        return np.load(path)
    predict = make_predictor(bottom)
    shape = tuple(int(d) for d in bottom.output.shape[1:])
    out = np.empty((len(images), *shape), np.float16)
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for start in range(0, len(images), 32):
            chunk = images[start : start + 32].astype(np.float32)
            out[start : start + len(chunk)] = np.asarray(predict(chunk))
            bar.update(len(chunk))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def _plain_features(bottom, images, frames, spec, desc: str, cache, key: str) -> Scored:
    """A split's frames scored as the device sees them: their plain views' features."""
    views = np.stack([plain_view(i, f, spec).image for i, f in zip(images, frames, strict=True)])
    return Scored(frames, images, _features(bottom, views, desc, cache, key))


def _say_split(splits: Splits, rec: dict) -> None:
    log.info(
        f"split: fit {rec['fit']['frames']} frames ({rec['fit']['wbc']} white cells), tune {rec['tune']['frames']} "
        f"({rec['tune']['wbc']}), val {rec['val']['frames']} ({rec['val']['wbc']}); val is only reported"
    )
    for note in splits.notes:
        log.info(f"note: {note}")


def _threshold(head, tune: Scored, spec, req: DetectorTrainRequest, splits: Splits) -> DetectorSpec:
    """The decoding spec the bundle carries: the operating threshold chosen on the tune frames."""
    _, tune_results = evaluate_frames(head, tune, spec, PROVISIONAL, 0.5)
    threshold, how = operating_threshold(tune_results, req.target_recall)
    return DetectorSpec(
        stride=STRIDE,
        heatmap=HEAT,
        boxes=BOXES,
        threshold=threshold,
        threshold_source=f"float model: {how} ({len(splits.tune)} frames; {TUNE_METHOD})",
        crop=CropRule(
            cell_fraction=req.crop_fraction,
            source="scripts/measure_cell_fraction.py on pbc-8class/train and blood-5class/train (docs/field.md)",
        ),
        notes=splits.notes,
    )


def _config(req: DetectorTrainRequest, spec, mspec, detector_spec, weights, data_fp, rec, best_epoch) -> dict:
    return {
        "task": "detector",
        "arch": "mobilenetv2-centernet",
        "kinds": [WBC],
        "preprocess": spec.to_dict(),
        "model": asdict(mspec),
        "detector": detector_spec.to_dict(),
        "weights_source": {"name": weights.name, "file": weights.source_file, "sha256": weights.sha256},
        "data": {"voc": str(req.voc), "fingerprint": data_fp},
        "split": rec,
        "training": {
            "views": req.views,
            "epochs": req.epochs,
            "best_epoch": best_epoch,
            "batch_size": req.batch_size,
            "lr": req.lr,
            "seed": req.seed,
            "target_recall": req.target_recall,
            "view_kinds": VIEW_KINDS,
            "command": req.command_line(),
        },
    }


def _reports(head, scored: dict[str, Scored], spec, detector_spec: DetectorSpec) -> dict:
    """The float model at the operating threshold on the tune and val frames."""
    reports = {}
    threshold = detector_spec.threshold
    for name, split in scored.items():
        reports[name], _ = evaluate_frames(head, split, spec, detector_spec, threshold)
        r = reports[name]
        log.info(
            f"{name} (float): AP@0.5 {r.ap50:.4f}, AP@0.5:0.95 {r.ap50_95:.4f}; at {threshold:.3f}: precision "
            f"{r.precision:.4f}, recall {r.recall:.4f}, {r.false_positives_per_frame:.3f} false positives/frame"
        )
    return reports


def train_detector(req: DetectorTrainRequest) -> dict:
    import keras

    t_start = time.perf_counter()
    keras.utils.set_random_seed(req.seed)
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(Path(req.voc))
    rec = splits.record()
    _say_split(splits, rec)
    spec = detector_preprocess(req.size)
    weights = resolve_weights("mobilenetv2", req.weights, req.size)
    mspec = DetectorModelSpec(
        size=req.size, width=req.width, blocks=req.blocks, normalization=weights.normalization
    )
    bottom = build_bottom(mspec, weights.npz_path)
    fit_images, tune_images, val_images = (
        load_frames(splits.fit),
        load_frames(splits.tune),
        load_frames(splits.val),
    )
    data_fp = voc_fingerprint(splits.fit + splits.tune + splits.val)
    key = hashlib.sha256(
        json.dumps(
            [data_fp, rec["fit"]["files"], spec.to_dict(), asdict(mspec), req.views, req.seed, weights.name]
        ).encode()
    ).hexdigest()[:16]
    x, *targets = _views(fit_images, splits.fit, spec, req.views, req.seed)
    feats = _features(bottom, x, "features (fit views)", req.cache, f"{key}-fit")
    del x
    tune = _plain_features(
        bottom, tune_images, splits.tune, spec, "features (tune)", req.cache, f"{key}-tune"
    )
    val = _plain_features(bottom, val_images, splits.val, spec, "features (val)", req.cache, f"{key}-val")
    head = build_head(mspec, feats.shape[1:])
    fit = fit_head(head, feats, targets, tune, spec, req)
    detector_spec = _threshold(head, tune, spec, req, splits)
    reports = _reports(head, {"tune": tune, "val": val}, spec, detector_spec)
    build_detector(bottom, head).save(out / "model.keras")
    config = _config(req, spec, mspec, detector_spec, weights, data_fp, rec, fit.best_epoch)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    report = {
        "history": fit.history,
        "best_epoch": fit.best_epoch,
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
        **{name: r.to_dict() for name, r in reports.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_pr_png(out / "pr_val.png", reports["val"], f"float detector, val split ({len(splits.val)} frames)")
    log.info(f"wrote {out}/model.keras, config.json, report.json, pr_val.png in {report['minutes']} min")
    return report
