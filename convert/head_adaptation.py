"""Quantization-aware head adaptation: teach the classifier head to read int8 backbone features.

Why: on the reference MobileNetV2 the int8 backbone's pooled features differ from the float ones by
about 13 % (relative L2, median over val), spread over every block rather than one bad layer, so
per-layer fixes and bias correction do not help. The head turns that noise into flipped decisions
on borderline monocyte / basophil cells (7 of 1000 on val). Full quantization-aware training
would retrain the backbone (hours here, and tensorflow-model-optimization does not support Keras 3).

What: convert the backbone (everything up to the pooled features) to int8 with the same
calibration images the real conversion uses; compute float and int8 features of the adaptation
images (training data, never the eval split); fine-tune only the head's Dense layers on both
feature sets with the true labels, so its decisions hold under either. The backbone weights are
untouched, so the int8 backbone the device runs is the one the head was adapted to. Cheap: the
backbone runs once per image and the head trains in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.fidelity import keras_probs, tflite_probs
from convert.augment import augmented_views
from convert.tflite_export import to_tflite
from edge.errors import DataError

EPOCHS = 10
LEARNING_RATE = 1e-4
BATCH_SIZE = 64
# Each image as it is plus two augmented views (training's own augmentation): the backbone was
# fine-tuned on these images, so their plain features are easier than unseen cells' are.
VIEWS = 3


@dataclass
class HeadAdaptation:
    feature_layer: str
    trained_layers: list[str]
    n_images: int
    views: int
    split: str
    epochs: int
    learning_rate: float
    feature_rel_error: float  # median relative L2 error, int8 vs float features, adaptation images
    train_accuracy_float_features: float
    train_accuracy_int8_features: float

    def to_dict(self) -> dict:
        return {
            "method": "classifier head fine-tuned on float and int8-backbone features of the adaptation "
            "images (true labels); backbone weights unchanged",
            "feature_layer": self.feature_layer,
            "trained_layers": self.trained_layers,
            "n_images": self.n_images,
            "views_per_image": self.views,
            "split": self.split,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "feature_rel_error_median": round(self.feature_rel_error, 4),
            "train_accuracy_float_features": round(self.train_accuracy_float_features, 4),
            "train_accuracy_int8_features": round(self.train_accuracy_int8_features, 4),
        }


def split_at_features(model):
    """(backbone model, feature layer, head layers): the head is everything after the last global
    pooling layer, and must be Dropout / Dense only (the head `edge train` builds)."""
    import keras

    pools = [
        i for i, layer in enumerate(model.layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)
    ]
    if not pools:
        raise DataError("head adaptation needs a model with a global average pooling layer before its head")
    feature = model.layers[pools[-1]]
    head = model.layers[pools[-1] + 1 :]
    if not head or not all(isinstance(layer, (keras.layers.Dense, keras.layers.Dropout)) for layer in head):
        raise DataError(
            "head adaptation needs a head of Dense and Dropout layers after the pooling layer; "
            f"found {[type(layer).__name__ for layer in head]}"
        )
    return keras.Model(model.inputs, feature.output), feature, head


def _head_model(head_layers, n_features: int):
    """A fresh head with the same architecture and weights, taking pooled features as input."""
    import keras

    x = inputs = keras.Input((n_features,))
    clones = []
    for layer in head_layers:
        clone = layer.__class__.from_config(layer.get_config())
        x = clone(x)
        clones.append((clone, layer))
    for clone, layer in clones:
        clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x), clones


def adapt(
    model,
    calibration: np.ndarray,
    images: np.ndarray,
    y: np.ndarray,
    split: str,
    seed: int = 0,
    views: int = VIEWS,
):
    """A copy of `model` whose head is adapted to the int8 backbone, and the record of what was done.

    `calibration`: the images the real conversion calibrates with (so the backbone's int8 ranges
    match); `images`, `y`: the labelled adaptation images (training split), each used as it is and
    in `views - 1` augmented views.
    """
    import keras

    if len(images) == 0:
        raise DataError("head adaptation needs labelled training images; the folder gave none")

    backbone, feature, head_layers = split_at_features(model)
    int8_backbone = to_tflite(backbone, "int8", calibration)
    float_parts, int8_parts = [], []
    for view in [images, *(batch for _, batch in augmented_views(images, views, seed, desc="adaptation"))]:
        float_parts.append(keras_probs(backbone, view, desc="float backbone features"))
        int8_parts.append(tflite_probs(int8_backbone, view, desc="int8 backbone features"))
    float_f, int8_f = np.concatenate(float_parts), np.concatenate(int8_parts)
    y = np.tile(np.asarray(y), len(float_parts))
    rel = np.linalg.norm(int8_f - float_f, axis=1) / np.maximum(np.linalg.norm(float_f, axis=1), 1e-12)

    keras.utils.set_random_seed(seed)
    head, clones = _head_model(head_layers, float_f.shape[1])
    head.compile(keras.optimizers.Adam(LEARNING_RATE), "sparse_categorical_crossentropy")
    x = np.concatenate([float_f, int8_f])
    labels = np.concatenate([y, y]).astype(np.int64)
    head.fit(x, labels, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=True, verbose=0)

    adapted = keras.models.clone_model(model)
    adapted.set_weights(model.get_weights())
    for clone, layer in clones:
        if clone.weights:
            adapted.get_layer(layer.name).set_weights(clone.get_weights())
    record = HeadAdaptation(
        feature_layer=feature.name,
        trained_layers=[layer.name for _, layer in clones if layer.weights],
        n_images=len(images),
        views=views,
        split=split,
        epochs=EPOCHS,
        learning_rate=LEARNING_RATE,
        feature_rel_error=float(np.median(rel)),
        train_accuracy_float_features=float((head.predict(float_f, verbose=0).argmax(1) == y).mean()),
        train_accuracy_int8_features=float((head.predict(int8_f, verbose=0).argmax(1) == y).mean()),
    )
    return adapted, record
