"""Backbones from keras.applications with the seed-000 head; input is 0-255 RGB, normalization inside.

The model takes float 0-255 RGB (what uint8 preprocessing gives), so int8 quantization folds the
rescaling into the input quantization and the device feeds uint8 directly (docs/design.md, "Integer on the device").
Normalization matches the weight source:
  - torchvision-ported ImageNet weights: ImageNet mean/std on 0-1 pixels (one Normalization layer);
  - Keras ImageNet weights and random init of MobileNetV2: Keras's [-1, 1] (Rescaling);
  - EfficientNetB0 carries its own Rescaling + Normalization;
  - EfficientNet-Lite0 (Google's TF weights via lukemelas's port): (x - 127) / 128, set in the
    builder's own Normalization layer.
All layers are stock Keras layers, so model.keras loads without custom objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

Arch = Literal["mobilenetv2", "efficientnetb0", "efficientnet-lite0"]
ARCHES = get_args(Arch)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where the cached-activation fine-tuning starts: everything above this layer's output is trained in
# phase 2, everything below stays frozen and is computed once per augmented view (convert.train).
DEFAULT_SPLIT = {
    # input of block 13 (14x14x96 at 224 px): blocks 13-16 + Conv_1 are fine-tuned.
    "mobilenetv2": "block_12_add",
    # input of stage 6 (14x14x112 at 224 px): blocks 6a-7a + top_conv are fine-tuned.
    "efficientnetb0": "block5c_add",
    "efficientnet-lite0": "block5c_add",
}

# EfficientNet-Lite: B0's blocks without squeeze-excite, ReLU6 instead of swish (Edge-TPU friendly).
_LITE_BLOCKS = [
    # kernel, repeats, filters_in, filters_out, expand_ratio, strides
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
]
LITE_MEAN, LITE_STD = 127.0, 128.0


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    n_classes: int
    img_size: int = 224
    normalization: str = "keras"  # "keras" ([-1, 1]), "imagenet" (torchvision), "builtin" (B0), "lite"
    dropout1: float = 0.3
    dense: int = 128
    dropout2: float = 0.2


def _normalize(x, normalization: str):
    import keras

    if normalization == "imagenet":
        mean = np.array(IMAGENET_MEAN) * 255.0
        var = (np.array(IMAGENET_STD) * 255.0) ** 2
        return keras.layers.Normalization(
            axis=-1, mean=mean.tolist(), variance=var.tolist(), name="imagenet_norm"
        )(x)
    if normalization == "keras":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale_pm1")(x)
    if normalization in ("builtin", "lite"):
        return x  # the EfficientNet builder's own Rescaling + Normalization
    raise ValueError(f"unknown normalization {normalization!r}")


def build_model(spec: ModelSpec, keras_weights: str | None = None):
    """image (0-255 RGB float) -> softmax. `keras_weights` is passed to keras.applications ("imagenet"/None)."""
    import keras

    if spec.arch not in ARCHES:
        raise ValueError(f"unknown arch {spec.arch!r}; choose from {ARCHES}")
    size = int(spec.img_size)
    inputs = keras.Input((size, size, 3), name="image")
    base = build_backbone(spec.arch, size, keras_weights, _normalize(inputs, spec.normalization))
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    x = keras.layers.Dropout(spec.dropout1, name="head_dropout1")(x)
    x = keras.layers.Dense(spec.dense, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(spec.dropout2, name="head_dropout2")(x)
    outputs = keras.layers.Dense(spec.n_classes, activation="softmax", name="head_softmax")(x)
    model = keras.Model(inputs, outputs, name=f"{spec.arch}_classifier")
    return model


def build_backbone(arch: str, size: int, keras_weights: str | None = None, input_tensor=None):
    """keras.applications backbone without top; EfficientNet-Lite0 from the EfficientNet builder."""
    import keras

    shape = (size, size, 3)
    if arch == "mobilenetv2":
        return keras.applications.MobileNetV2(
            input_tensor=input_tensor, include_top=False, weights=keras_weights, input_shape=shape
        )
    if arch == "efficientnetb0":
        return keras.applications.EfficientNetB0(
            input_tensor=input_tensor, include_top=False, weights=keras_weights, input_shape=shape
        )
    if arch == "efficientnet-lite0":
        from keras.src.applications.efficientnet import EfficientNet

        blocks = [
            dict(
                kernel_size=k,
                repeats=r,
                filters_in=i,
                filters_out=o,
                expand_ratio=e,
                id_skip=True,
                strides=st,
                se_ratio=0.0,
            )
            for k, r, i, o, e, st in _LITE_BLOCKS
        ]
        base = EfficientNet(
            1.0,
            1.0,
            224,
            activation="relu6",
            blocks_args=blocks,
            name="efficientnet_lite0",
            include_top=False,
            weights=keras_weights,
            input_tensor=input_tensor,
            input_shape=shape,
        )
        norm = [layer for layer in base.layers if isinstance(layer, keras.layers.Normalization)][0]
        # The builder rescales by 1/255 first; this makes the pair compute (x - 127) / 128.
        mean, var = LITE_MEAN / 255.0, (LITE_STD / 255.0) ** 2
        norm.set_weights([np.full(3, mean, np.float32), np.full(3, var, np.float32), np.array(0)])
        norm.finalize_state()
        return base
    raise ValueError(f"unknown arch {arch!r}; choose from {ARCHES}")


def head_layer_names() -> tuple[str, ...]:
    return ("head_pool", "head_dropout1", "head_dense", "head_dropout2", "head_softmax")


def split_model(model, split_layer: str | None):
    """(bottom, top): bottom maps the image to `split_layer`'s output; top maps that to the softmax.

    Both share layers (and so weights) with `model`. With split_layer None the bottom is None and the
    top is the whole model (the network is trained end to end on augmented images).
    """
    import keras

    if split_layer is None:
        return None, model
    boundary = model.get_layer(split_layer).output
    bottom = keras.Model(model.input, boundary, name="frozen_bottom")
    top = keras.Model(boundary, model.output, name="trainable_top")
    return bottom, top


def set_trainable(top, head_only: bool, freeze_bn: bool = True) -> int:
    """Freeze all but the head (phase 1) or all but BatchNorm (phase 2); returns trainable layer count.

    With pretrained weights BatchNorm layers stay frozen, which in Keras 3 also runs them in inference
    mode: their ImageNet statistics are kept, as small fine-tuning batches would otherwise destroy
    them. From random init (freeze_bn False) BatchNorm trains like everything else.
    """
    import keras

    head = set(head_layer_names())
    count = 0
    for layer in top.layers:
        if head_only:
            layer.trainable = layer.name in head
        else:
            layer.trainable = not (freeze_bn and isinstance(layer, keras.layers.BatchNormalization))
        count += bool(layer.trainable and layer.weights)
    return count
