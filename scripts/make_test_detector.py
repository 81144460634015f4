#!/usr/bin/env python3
"""Write the tiny int8 detector bundle the device tests use, tests/fixtures/tiny-detector-int8 (a few KB).

    python scripts/make_test_detector.py [--out tests/fixtures/tiny-detector-int8]

Three strided convolutions and the white-cell detector's own head outputs (a score map and box
distances, stride 8 at 128 px), trained for a few minutes on synthetic fields
(edge.synthetic.make_voc_dataset: drawn white and red cells), with the training side's own targets and
losses (convert/detector_data.py, convert/detector_fit.py), then converted by `edge quantize`'s
detector path (convert/detector_quantize.py): full int8, uint8 in and out. With it the detect,
eval-detector, run --mode field and bench --mode field tests run on a device install without
TensorFlow. It finds synthetic cells and nothing else; run it again (train extra) only when the
bundle format changes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE, STRIDE = 128, 8


def build_tiny_detector():
    import keras

    L = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = L.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(x)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu6")(x)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu6")(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu6")(x)
    heat = L.Conv2D(
        1, 1, activation="sigmoid", bias_initializer=keras.initializers.Constant(-3.0), name="heatmap"
    )(x)
    boxes = L.Conv2D(
        4, 1, activation="relu", bias_initializer=keras.initializers.Constant(1.5), name="boxes"
    )(x)
    return keras.Model(inputs, [heat, boxes], name="tiny_detector")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny-detector-int8"),
    )
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from convert.detector_data import build_photometric, frame_boxes, grid_targets, make_view, plain_view
    from convert.detector_fit import losses
    from convert.detector_quantize import quantize_detector
    from convert.detector_splits import load_frames, make_splits
    from convert.quantize import QuantizeRequest
    from edge.detect.spec import CropRule, DetectorSpec
    from edge.preprocess import PreprocessSpec
    from edge.synthetic import make_voc_dataset

    keras.utils.set_random_seed(0)
    spec = PreprocessSpec(size=SIZE, aspect="pad", contrast="none")
    with tempfile.TemporaryDirectory() as tmp:
        voc = make_voc_dataset(Path(tmp) / "voc", frames=160, seed=3)
        splits = make_splits(voc)
        frames = splits.fit + splits.tune
        images = load_frames(frames)
        rng = np.random.default_rng(0)
        photometric = build_photometric(SIZE, 0)
        views = [plain_view(i, f, spec) for i, f in zip(images, frames, strict=True)]
        for _ in range(3):
            for i, f in zip(images, frames, strict=True):
                views.append(make_view(i, *frame_boxes(f), spec, rng, photometric))
        x = np.stack([v.image for v in views]).astype("float32")
        targets = [np.stack(c) for c in zip(*(grid_targets(v, SIZE, STRIDE) for v in views), strict=True)]
        model = build_tiny_detector()
        opt = keras.optimizers.Adam(3e-3)

        @tf.function
        def step(xb, ht, hw, bt, bw):
            with tf.GradientTape() as tape:
                hp, bp = model(xb, training=True)
                focal, box = losses(tf, hp, bp, ht, hw, bt, bw)
                loss = focal + 2.0 * box
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        for epoch in range(args.epochs):
            order = rng.permutation(len(x))
            for s in range(0, len(x), 32):
                idx = order[s : s + 32]
                loss = step(x[idx], *(t[idx] for t in targets))
            if epoch % 10 == 9:
                print(f"epoch {epoch + 1}: loss {float(loss):.3f}", flush=True)
        run = Path(tmp) / "run"
        run.mkdir()
        model.save(run / "model.keras")
        detector = DetectorSpec(
            stride=STRIDE,
            heatmap="heatmap",
            boxes="boxes",
            threshold=0.3,
            crop=CropRule(cell_fraction=0.5, source="tests: any fraction"),
        )
        config = {
            "task": "detector",
            "arch": "tiny-detector",
            "kinds": ["wbc"],
            "preprocess": spec.to_dict(),
            "detector": detector.to_dict(),
            "weights_source": "none",
            "split": splits.record(),
            "training": {"target_recall": 0.99, "command": "python scripts/make_test_detector.py"},
        }
        (run / "config.json").write_text(json.dumps(config, indent=2))
        request = QuantizeRequest(
            source=run, calib_dir=voc, eval_dir=voc, out_dir=Path(args.out), calib_count=120
        )
        print("\n".join(quantize_detector(request).lines))
    out = Path(args.out)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KB" for p in sorted(out.iterdir()))
    print(f"wrote {out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
