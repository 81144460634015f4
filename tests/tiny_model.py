"""A tiny real Keras CNN -> real int8 TFLite bundle, for tests that need a model but not accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.dataset import IMAGE_SUFFIXES
from edge.preprocess import PreprocessSpec, preprocess_file

TINY_SPEC = PreprocessSpec(size=64)


def load_folder(root: Path, spec: PreprocessSpec = TINY_SPEC):
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for i, name in enumerate(labels):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                xs.append(preprocess_file(f, spec))
                ys.append(i)
    return np.stack(xs), np.array(ys), labels


def build_tiny_keras(n_classes: int, size: int = 64):
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def build_tiny_bundle(train_dir: Path, out_dir: Path, epochs: int = 15) -> Path:
    import keras

    from convert.tflite_export import bundle_from_tflite, to_tflite

    keras.utils.set_random_seed(0)
    x, y, labels = load_folder(Path(train_dir))
    model = build_tiny_keras(len(labels))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=16, verbose=0)
    tfl = to_tflite(model, "int8", x[:40])
    bundle_from_tflite(
        out_dir,
        tfl,
        labels,
        TINY_SPEC,
        model={"architecture": "tiny-cnn", "weights": "none", "precision": "int8"},
    )
    model.save(Path(out_dir) / "float.keras")  # scripts/make_test_bundle.py reads it
    return Path(out_dir)
