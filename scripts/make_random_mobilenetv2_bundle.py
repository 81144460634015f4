#!/usr/bin/env python3
"""A MobileNetV2-sized int8 bundle with random weights, for throughput measurements only.

    python scripts/make_random_mobilenetv2_bundle.py /tmp/mnv2-int8 [--size 224]

Needs the train extra (TensorFlow). Its answers are meaningless (random weights): use it to time
decode + preprocess + invoke when the reference bundle is not at hand. Never commit its output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)

    import keras

    from convert.tflite_export import bundle_from_tflite, to_tflite
    from edge.preprocess import PreprocessSpec, preprocess
    from edge.synthetic import CLASSES, render_cell

    keras.utils.set_random_seed(0)
    size = args.size
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None, pooling="avg"
    )(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    spec = PreprocessSpec(size=size)
    rng = np.random.default_rng(0)
    calibration = np.stack([preprocess(render_cell(CLASSES[i % 5], rng, size), spec) for i in range(16)])
    labels = ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]
    bundle_from_tflite(
        args.out,
        to_tflite(model, "int8", calibration),
        labels,
        spec,
        model={"architecture": "mobilenetv2", "weights": "random (throughput only)", "precision": "int8"},
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
