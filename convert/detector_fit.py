"""The detector head's fit on cached backbone features: CenterNet's focal loss on the score map and
GIoU on the box distances (Adam, cosine decay). After each epoch the tune frames are decoded by
edge.detect.decode, the device's own code, and scored by edge.detect.evaluate; the best epoch by
tune AP@0.5:0.95 (then AP@0.5) is kept."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from convert.detector_model import BOXES, HEAT, STRIDE
from edge.detect.decode import decode
from edge.detect.evaluate import evaluate
from edge.detect.spec import WBC, DetectorSpec
from edge.detect.voc import VocFrame, truth
from edge.preprocess import PreprocessSpec, input_geometry

log = logging.getLogger(__name__)

# The score floor the tune and val frames are decoded at: AP ranks every candidate above it.
EVAL_FLOOR = 0.02
# The spec the tune frames are decoded with while fitting (the threshold is chosen afterwards).
PROVISIONAL = DetectorSpec(stride=STRIDE, heatmap=HEAT, boxes=BOXES, threshold=0.5)


@dataclass
class Scored:
    """Frames the float head is scored on (tune, val): the frames, their images, their features."""

    frames: list[VocFrame]
    images: list[np.ndarray]
    features: np.ndarray


def losses(tf, heat_p, box_p, heat_t, heat_w, box_t, box_w):
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


def evaluate_frames(head, scored: Scored, spec: PreprocessSpec, detector_spec: DetectorSpec, threshold):
    """Float head on a split's plain features -> the device's decoding -> evaluate.py."""
    heat, boxes = head.predict(scored.features.astype(np.float32), batch_size=64, verbose=0)
    results = []
    for i, (frame, image) in enumerate(zip(scored.frames, scored.images, strict=True)):
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


def _train_step(tf, head, opt):
    @tf.function(reduce_retracing=True)
    def step(xb, ht, hw, bt, bw):
        with tf.GradientTape() as tape:
            hp, bp = head(xb, training=True)
            focal, box = losses(tf, hp, bp, ht, hw, bt, bw)
            loss = focal + 2.0 * box
        grads = tape.gradient(loss, head.trainable_variables)
        opt.apply_gradients(zip(grads, head.trainable_variables, strict=True))
        return focal, box

    return step


def _epoch(tf, step, feats, targets, order, batch_size: int, desc: str) -> np.ndarray:
    """One pass over the fit views in `order`: the summed (focal, giou) losses."""
    from tqdm import tqdm

    steps = int(np.ceil(len(feats) / batch_size))
    totals = np.zeros(2)
    with tqdm(range(steps), desc=desc, unit="batch", leave=False) as bar:
        for s in bar:
            idx = np.sort(order[s * batch_size : (s + 1) * batch_size])
            f, b = step(tf.constant(feats[idx].astype(np.float32)), *(tf.constant(t[idx]) for t in targets))
            totals += (float(f), float(b))
    return totals


@dataclass
class Fit:
    history: list[dict]
    best_epoch: int


def fit_head(head, feats, targets, tune: Scored, spec: PreprocessSpec, req) -> Fit:
    """Train `head` on the fit views' features and grid targets (heat, heat weight, boxes, box weight)
    for req.epochs; `head` ends with the best epoch's weights."""
    import keras
    import tensorflow as tf

    steps = int(np.ceil(len(feats) / req.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(req.lr, req.epochs * steps, alpha=0.02)
    step = _train_step(tf, head, keras.optimizers.Adam(schedule))
    rng = np.random.default_rng(req.seed)
    best, best_weights, best_epoch, history = (-1.0, -1.0), None, 0, []
    for epoch in range(1, req.epochs + 1):
        order = rng.permutation(len(feats))
        totals = (
            _epoch(tf, step, feats, targets, order, req.batch_size, f"epoch {epoch}/{req.epochs}") / steps
        )
        tune_report, _ = evaluate_frames(head, tune, spec, PROVISIONAL, 0.5)
        history.append(
            {
                "epoch": epoch,
                "focal": round(totals[0], 4),
                "giou": round(totals[1], 4),
                "tune_ap50": tune_report.ap50,
                "tune_ap50_95": tune_report.ap50_95,
            }
        )
        log.info(
            f"epoch {epoch}: focal {totals[0]:.4f}, giou {totals[1]:.4f}; tune AP@0.5 "
            f"{tune_report.ap50:.4f}, AP@0.5:0.95 {tune_report.ap50_95:.4f}"
        )
        if (tune_report.ap50_95, tune_report.ap50) > best:
            best, best_epoch, best_weights = (
                (tune_report.ap50_95, tune_report.ap50),
                epoch,
                head.get_weights(),
            )
    head.set_weights(best_weights)
    return Fit(history, best_epoch)
