"""`edge train-detector VOC_DIR --out RUN`: the white-cell detector, trained on cached backbone features.

Steps, each printed as it runs:

    split     the VOC frames by the sha256 of their names (edge.detect.voc): val (20 %) is never
              trained or tuned on; the rest is split again, the same way with another salt, into fit
              (trained on) and tune (the epoch and the operating threshold are chosen on it)
    views     `views` augmented views of every fit frame (convert/detector_data.py), through the
              device's preprocessing, and their grid targets
    features  the frozen MobileNetV2 bottom (offline ImageNet port) run once per view, cached float16
    fit       the head: focal loss on the score map, GIoU on the box distances (Adam, cosine decay);
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
import time
from dataclasses import asdict, dataclass, field
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
from convert.detector_model import (
    BOXES,
    HEAT,
    STRIDE,
    DetectorModelSpec,
    build_bottom,
    build_detector,
    build_head,
)
from edge.detect.decode import decode
from edge.detect.evaluate import evaluate, operating_threshold
from edge.detect.spec import WBC, CropRule, DetectorSpec
from edge.detect.voc import (
    SPLIT_METHOD,
    VocFrame,
    assign_splits,
    near_duplicates,
    read_voc,
    split_frames,
    truth,
)
from edge.errors import DataError
from edge.hashing import fingerprint, sha256_file
from edge.preprocess import PreprocessSpec, input_geometry, load_image

TUNE_FRACTION = 0.2
TUNE_METHOD = "train frames with int(sha256('tune:' + stem)[:8], 16) % 100 < 20"
# The score floor the tune and val frames are decoded at: AP ranks every candidate above it.
EVAL_FLOOR = 0.02


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
        import shlex

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


def tune_of(stem: str) -> bool:
    return int(hashlib.sha256(f"tune:{stem}".encode()).hexdigest()[:8], 16) % 100 < round(100 * TUNE_FRACTION)


@dataclass
class Splits:
    fit: list[VocFrame]
    tune: list[VocFrame]
    val: list[VocFrame]
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        def names(frames):
            return [f.image.name for f in frames]

        def cells(frames):
            return sum(len(f.of(WBC)) for f in frames)

        return {
            "method": SPLIT_METHOD,
            "tune_method": TUNE_METHOD,
            "fit": {"frames": len(self.fit), "wbc": cells(self.fit), "files": names(self.fit)},
            "tune": {"frames": len(self.tune), "wbc": cells(self.tune), "files": names(self.tune)},
            "val": {"frames": len(self.val), "wbc": cells(self.val), "files": names(self.val)},
            "annotation_notes": self.notes,
        }


def make_splits(voc: Path) -> Splits:
    frames = read_voc(voc)
    duplicates = near_duplicates(frames)
    assigned = assign_splits(frames, duplicates)
    train = split_frames(frames, "train", assigned)
    splits = Splits(
        [f for f in train if not tune_of(f.stem)],
        [f for f in train if tune_of(f.stem)],
        split_frames(frames, "val", assigned),
        [n for f in frames for n in f.notes]
        + [
            f"{a} and {b} show the same field (thumbnail correlation {c}): kept in one split"
            for a, b, c in duplicates
        ],
    )
    if not splits.fit or not splits.tune or not splits.val:
        raise DataError(f"{voc}: too few frames to split into fit, tune and val ({len(frames)} frames)")
    return splits


def voc_fingerprint(frames: list[VocFrame]) -> str:
    """One sha256 over every frame's image and annotation (edge.hashing.fingerprint)."""
    return fingerprint(
        (kind, f.image.name if kind == "image" else f.annotation.name, sha256_file(path))
        for f in frames
        for kind, path in (("image", f.image), ("annotation", f.annotation))
    )


def _say(msg: str) -> None:
    print(msg, flush=True)


def _load(frames: list[VocFrame]) -> list[np.ndarray]:
    from edge.preprocess import to_bgr8

    return [to_bgr8(load_image(f.image)) for f in frames]


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

    from convert.features import make_predictor

    path = cache / f"detector-features-{key}.npy" if cache else None
    if path is not None and path.exists():
        _say(f"{desc}: features read from cache {path}")
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


def _losses(tf, heat_p, box_p, heat_t, heat_w, box_t, box_w):
    """CenterNet's penalty-reduced focal loss (per positive) and GIoU on the box distances."""
    eps = 1e-6
    p = tf.clip_by_value(heat_p, eps, 1 - eps)
    pos = tf.cast(heat_t >= 1.0, tf.float32)
    pos_loss = -tf.math.log(p) * tf.square(1 - p) * pos
    neg_loss = -tf.math.log(1 - p) * tf.square(p) * tf.pow(1 - heat_t, 4) * (1 - pos)
    n_pos = tf.maximum(tf.reduce_sum(pos), 1.0)
    focal = tf.reduce_sum((pos_loss + neg_loss) * heat_w) / n_pos
    lp, tp, rp, bp = tf.unstack(box_p, axis=-1)
    lt, tt, rt, bt = tf.unstack(box_t, axis=-1)
    area_p, area_t = (lp + rp) * (tp + bp), (lt + rt) * (tt + bt)
    inter = (tf.minimum(lp, lt) + tf.minimum(rp, rt)) * (tf.minimum(tp, tt) + tf.minimum(bp, bt))
    union = area_p + area_t - inter
    enclose = (tf.maximum(lp, lt) + tf.maximum(rp, rt)) * (tf.maximum(tp, tt) + tf.maximum(bp, bt))
    giou = inter / tf.maximum(union, eps) - (enclose - union) / tf.maximum(enclose, eps)
    box = tf.reduce_sum((1 - giou) * box_w) / tf.maximum(tf.reduce_sum(box_w), eps)
    return focal, box


def _evaluate_frames(head, features, frames, images, spec, detector_spec, threshold):
    """Float head on a split's plain features -> the device's decoding -> evaluate.py."""
    heat, boxes = head.predict(features.astype(np.float32), batch_size=64, verbose=0)
    results = []
    for i, (frame, image) in enumerate(zip(frames, images, strict=True)):
        dets = decode(
            heat[i],
            boxes[i],
            detector_spec,
            [WBC],
            input_geometry(image.shape, spec),
            image.shape,
            threshold=EVAL_FLOOR,
        )
        results.append((dets, truth(frame)))
    return evaluate(results, threshold), results


def train_detector(req: DetectorTrainRequest) -> dict:
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from convert.weights import resolve_weights

    t_start = time.perf_counter()
    keras.utils.set_random_seed(req.seed)
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(Path(req.voc))
    rec = splits.record()
    _say(
        f"split: fit {rec['fit']['frames']} frames ({rec['fit']['wbc']} white cells), tune {rec['tune']['frames']} "
        f"({rec['tune']['wbc']}), val {rec['val']['frames']} ({rec['val']['wbc']}); val is only reported"
    )
    for note in splits.notes:
        _say(f"note: {note}")
    spec = detector_preprocess(req.size)
    weights = resolve_weights("mobilenetv2", req.weights, req.size)
    mspec = DetectorModelSpec(
        size=req.size, width=req.width, blocks=req.blocks, normalization=weights.normalization
    )
    bottom = build_bottom(mspec, weights.npz_path)
    fit_images, tune_images, val_images = _load(splits.fit), _load(splits.tune), _load(splits.val)
    data_fp = voc_fingerprint(splits.fit + splits.tune + splits.val)
    key = hashlib.sha256(
        json.dumps(
            [data_fp, rec["fit"]["files"], spec.to_dict(), asdict(mspec), req.views, req.seed, weights.name]
        ).encode()
    ).hexdigest()[:16]
    x, heat_t, heat_w, box_t, box_w = _views(fit_images, splits.fit, spec, req.views, req.seed)
    feats = _features(bottom, x, "features (fit views)", req.cache, f"{key}-fit")
    del x
    tune_feats = _features(
        bottom,
        np.stack([plain_view(i, f, spec).image for i, f in zip(tune_images, splits.tune, strict=True)]),
        "features (tune)",
        req.cache,
        f"{key}-tune",
    )
    val_feats = _features(
        bottom,
        np.stack([plain_view(i, f, spec).image for i, f in zip(val_images, splits.val, strict=True)]),
        "features (val)",
        req.cache,
        f"{key}-val",
    )
    head = build_head(mspec, feats.shape[1:])
    steps = int(np.ceil(len(feats) / req.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(req.lr, req.epochs * steps, alpha=0.02)
    opt = keras.optimizers.Adam(schedule)
    provisional = DetectorSpec(stride=STRIDE, heatmap=HEAT, boxes=BOXES, threshold=0.5)

    @tf.function(reduce_retracing=True)
    def step(xb, ht, hw, bt, bw):
        with tf.GradientTape() as tape:
            hp, bp = head(xb, training=True)
            focal, box = _losses(tf, hp, bp, ht, hw, bt, bw)
            loss = focal + 2.0 * box
        grads = tape.gradient(loss, head.trainable_variables)
        opt.apply_gradients(zip(grads, head.trainable_variables, strict=True))
        return focal, box

    rng = np.random.default_rng(req.seed)
    best = (-1.0, -1.0)
    best_weights, best_epoch, history = None, 0, []
    for epoch in range(1, req.epochs + 1):
        order = rng.permutation(len(feats))
        totals = np.zeros(2)
        with tqdm(range(steps), desc=f"epoch {epoch}/{req.epochs}", unit="batch", leave=False) as bar:
            for s in bar:
                idx = np.sort(order[s * req.batch_size : (s + 1) * req.batch_size])
                f, b = step(
                    tf.constant(feats[idx].astype(np.float32)),
                    tf.constant(heat_t[idx]),
                    tf.constant(heat_w[idx]),
                    tf.constant(box_t[idx]),
                    tf.constant(box_w[idx]),
                )
                totals += (float(f), float(b))
        tune_report, _ = _evaluate_frames(head, tune_feats, splits.tune, tune_images, spec, provisional, 0.5)
        history.append(
            {
                "epoch": epoch,
                "focal": round(totals[0] / steps, 4),
                "giou": round(totals[1] / steps, 4),
                "tune_ap50": tune_report.ap50,
                "tune_ap50_95": tune_report.ap50_95,
            }
        )
        _say(
            f"epoch {epoch}: focal {totals[0] / steps:.4f}, giou {totals[1] / steps:.4f}; tune AP@0.5 "
            f"{tune_report.ap50:.4f}, AP@0.5:0.95 {tune_report.ap50_95:.4f}"
        )
        if (tune_report.ap50_95, tune_report.ap50) > best:
            best, best_epoch, best_weights = (
                (tune_report.ap50_95, tune_report.ap50),
                epoch,
                head.get_weights(),
            )
    head.set_weights(best_weights)
    _, tune_results = _evaluate_frames(head, tune_feats, splits.tune, tune_images, spec, provisional, 0.5)
    threshold, how = operating_threshold(tune_results, req.target_recall)
    detector_spec = DetectorSpec(
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
    reports = {}
    for name, feats_, frames, images in (
        ("tune", tune_feats, splits.tune, tune_images),
        ("val", val_feats, splits.val, val_images),
    ):
        reports[name], _ = _evaluate_frames(head, feats_, frames, images, spec, detector_spec, threshold)
        r = reports[name]
        _say(
            f"{name} (float): AP@0.5 {r.ap50:.4f}, AP@0.5:0.95 {r.ap50_95:.4f}; at {threshold:.3f}: precision "
            f"{r.precision:.4f}, recall {r.recall:.4f}, {r.false_positives_per_frame:.3f} false positives/frame"
        )
    model = build_detector(bottom, head)
    model.save(out / "model.keras")
    config = {
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
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    report = {
        "history": history,
        "best_epoch": best_epoch,
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
        **{name: r.to_dict() for name, r in reports.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    from edge.detect.pr_plot import write_pr_png

    write_pr_png(out / "pr_val.png", reports["val"], f"float detector, val split ({len(splits.val)} frames)")
    _say(f"wrote {out}/model.keras, config.json, report.json, pr_val.png in {report['minutes']} min")
    return report
