#!/usr/bin/env python3
"""Write the tiny int8 bundle the device tests use, tests/fixtures/tiny-int8 (a few KB, committed).

    python scripts/make_test_bundle.py [--out tests/fixtures/tiny-int8]

A small real CNN (two convolutions, 64 px) trained for a few epochs on the synthetic cells of
edge.synthetic, converted to full int8 with uint8 I/O by the project's own exporter. With it, the
runtime, classify, eval, bench and daemon tests run on a device install (`make test-device`) that
has no TensorFlow. Run it again (it needs the train extra) only when the bundle format changes; its
answers mean nothing beyond the synthetic classes. `float_val_probs.npy` beside it holds the float
model's probabilities on the tests' synthetic validation images, for the test that compares the
int8 model with the float one it came from. `model.onnx` is model.tflite through
`edge export BUNDLE --format onnx` (tf2onnx's TFLite front end), for the onnx backend's device tests.
tests/fixtures/tiny-reject-int8 is the same model through `edge quantize --reject mahalanobis`: two
outputs and rejection statistics, for the rejection tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fixtures = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
    ap.add_argument("--out", default=str(fixtures / "tiny-int8"))
    ap.add_argument(
        "--reject-out",
        default=str(fixtures / "tiny-reject-int8"),
        help="the same model through `edge quantize --reject mahalanobis`: a bundle with rejection",
    )
    args = ap.parse_args(argv)

    import keras
    import numpy as np

    from convert.export import ExportRequest, export
    from convert.quantize import QuantizeRequest, quantize
    from edge.dataset import images_in
    from edge.preprocess import preprocess_file
    from edge.synthetic import make_dataset
    from tests.tiny_model import TINY_SPEC, build_tiny_bundle

    with tempfile.TemporaryDirectory() as tmp:
        # The same synthetic splits as the tests' `synthetic_split` fixture (seeds 1 and 2).
        train = make_dataset(Path(tmp) / "synthetic" / "train", per_class=24, seed=1)
        val = make_dataset(Path(tmp) / "synthetic" / "val", per_class=8, seed=2)
        out = build_tiny_bundle(train, Path(args.out))
        model = keras.models.load_model(out / "float.keras")
        x = np.stack([preprocess_file(f, TINY_SPEC) for f in images_in(val)]).astype("float32")
        np.save(out / "float_val_probs.npy", model.predict(x, verbose=0).astype(np.float32))
        request = QuantizeRequest(
            source=out / "float.keras",
            calib_dir=train,
            out_dir=Path(args.reject_out),
            calib_count=60,
            reject="mahalanobis",
            reject_layer="head_pool",
            reject_holdout=val,
        )
        quantize(request)
        (out / "float.keras").unlink()
        export(ExportRequest(out, format="onnx"))
    for folder in (out, Path(args.reject_out)):
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KB" for p in sorted(folder.iterdir()))
        print(f"wrote {folder}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
