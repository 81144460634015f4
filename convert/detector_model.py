"""The white-cell detector: MobileNetV2 (offline ImageNet port) cut at stride 16, and a small
CenterNet-style head (a score map + box distances), all stock Keras layers that map to int8 and to
the Edge TPU (CONV_2D, DEPTHWISE_CONV_2D, ADD, PAD, RELU6, LOGISTIC).

The model takes 0-255 RGB (the letterboxed frame from edge.preprocess) and normalizes inside, so the
int8 model takes uint8 straight from preprocessing (docs/design.md, "Integer on the device").
The backbone below `FEATURES` stays frozen: its output is computed once per augmented view and
cached (convert/detector_train.py), and only the head trains, in minutes on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convert.models import _normalize, build_backbone
from convert.weights import apply_layer_weights

STRIDE = 16
FEATURES = "block_12_add"  # MobileNetV2's last stride-16 block (96 channels)
HEAT, BOXES = "heatmap", "boxes"
PRIOR = 0.05  # the score map's starting value everywhere: few cells, mostly background


@dataclass(frozen=True)
class DetectorModelSpec:
    size: int = 256
    width: int = 128  # channels of the head
    blocks: int = 2  # depthwise-separable blocks in the head
    kinds: int = 1
    features: str = FEATURES
    normalization: str = "imagenet"


def build_bottom(spec: DetectorModelSpec, npz_path: str | None):
    """0-255 RGB image -> the frozen backbone features (stride 16)."""
    import keras

    inputs = keras.Input((spec.size, spec.size, 3), name="image")
    base = build_backbone("mobilenetv2", spec.size, None, _normalize(inputs, spec.normalization))
    if npz_path:
        apply_layer_weights(base, npz_path)
    features = base.get_layer(spec.features).output
    bottom = keras.Model(inputs, features, name="detector_bottom")
    bottom.trainable = False
    return bottom


def build_head(spec: DetectorModelSpec, feature_shape: tuple[int, ...]):
    """features -> (score map, box distances): SSD-lite style depthwise-separable blocks."""
    import keras

    L = keras.layers
    inputs = keras.Input(feature_shape, name="features")
    x = L.Conv2D(spec.width, 1, activation="relu6", name="head_in")(inputs)
    for i in range(spec.blocks):
        y = L.DepthwiseConv2D(3, padding="same", activation="relu6", name=f"head_dw{i}")(x)
        y = L.Conv2D(spec.width, 1, activation="relu6", name=f"head_pw{i}")(y)
        x = L.Add(name=f"head_add{i}")([x, y])
    heat = L.Conv2D(
        spec.kinds,
        1,
        activation="sigmoid",
        bias_initializer=keras.initializers.Constant(float(np.log(PRIOR / (1 - PRIOR)))),
        name=HEAT,
    )(x)
    # Distances in grid cells; a white cell is 3-9 cells across at 256 px, so start near its half.
    boxes = L.Conv2D(4, 1, activation="relu", bias_initializer=keras.initializers.Constant(2.5), name=BOXES)(
        x
    )
    return keras.Model(inputs, [heat, boxes], name="detector_head")


def build_detector(bottom, head):
    """The whole model, image -> [score map, box distances], sharing the layers (and weights)."""
    import keras

    inputs = keras.Input(bottom.input.shape[1:], name="image")
    heat, boxes = head(bottom(inputs))
    heat = keras.layers.Identity(name=HEAT)(heat)
    boxes = keras.layers.Identity(name=BOXES)(boxes)
    return keras.Model(inputs, [heat, boxes], name="wbc_detector")
