"""Cached activations at a block boundary, and the batch sampler that trains on them.

Running the whole MobileNetV2 every epoch costs ~11 images/s on 2 cores. The frozen bottom of the
network does not change during training, so we run it once per (image, augmented view) and store
its output (float16); the trainable top then trains on those arrays, several times faster. View 0
of every image is the unaugmented image; views 1..K-1 are augmented (training split only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from convert.augment import augmented_views
from edge.progress import progress

log = logging.getLogger(__name__)


def _batched_predict(fn, images: np.ndarray, batch_size: int, out: np.ndarray, bar=None) -> None:
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].astype(np.float32)
        out[start : start + len(chunk)] = np.asarray(fn(chunk))
        if bar is not None:
            bar.update(len(chunk))


def make_predictor(model):
    """A compiled inference function (training=False); ~2x faster than model.predict on small CPUs."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the last, smaller batch retraces once; that is expected
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def activation_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def extract_views(
    bottom,
    images: np.ndarray,
    n_views: int,
    augment: bool,
    seed: int,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    key: str | None = None,
    desc: str = "features",
    kind: str = "seed",
    raw: np.ndarray | None = None,
    spec=None,
) -> np.ndarray:
    """(n_views, N, ...) activations of `bottom` (float16), or the uint8 views when bottom is None.
    `kind`, `raw` and `spec` say how views are augmented (convert.augment.augmented_views)."""
    path = Path(cache_dir) / f"activations-{key}.npy" if cache_dir is not None and key else None
    if path is not None and path.exists():
        log.info(f"{desc}: activations read from cache {path}")
        return np.load(path, mmap_mode="r")
    n_views = n_views if augment else 1
    if bottom is None:
        shape, dtype = images.shape[1:], np.uint8
    else:
        shape, dtype = tuple(int(d) for d in bottom.output.shape[1:]), np.float16
    out = np.empty((n_views, len(images), *shape), dtype=dtype)
    predict = make_predictor(bottom) if bottom is not None else None
    with progress(total=n_views * len(images), desc=desc) as bar:

        def store(view, batch):
            if predict is None:
                out[view] = batch
                bar.update(len(batch))
            else:
                _batched_predict(predict, batch, batch_size, out[view], bar)

        store(0, images)
        if augment:
            for view, batch in augmented_views(images, n_views, seed, desc, kind, raw, spec):
                store(view, batch)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
    return out


def predict_arrays(model, arrays: np.ndarray, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Run `model` over `arrays` in batches (training=False) and return float32 outputs."""
    predict = make_predictor(model)
    shape = tuple(int(d) for d in model.output.shape[1:])
    out = np.empty((len(arrays), *shape), dtype=np.float32)
    with progress(total=len(arrays), desc=desc) as bar:
        _batched_predict(predict, arrays, batch_size, out, bar)
    return out


def make_sampler(views: np.ndarray, y_onehot: np.ndarray, batch_size: int, seed: int, sample_weight=None):
    """A keras PyDataset: every epoch visits each image once, in a new order, as a random view."""
    import keras

    class ViewSampler(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.n = views.shape[1]
            self.on_epoch_end()

        def __len__(self):
            return int(np.ceil(self.n / batch_size))

        def on_epoch_end(self):
            self.order = self.rng.permutation(self.n)
            self.view = self.rng.integers(0, views.shape[0], self.n)

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            x = views[self.view[idx], idx].astype(np.float32)
            if sample_weight is None:
                return x, y_onehot[idx]
            return x, y_onehot[idx], sample_weight[idx]

    return ViewSampler()
