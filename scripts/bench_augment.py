"""Images/s of the training input pipeline: preprocessing (decode + edge.preprocess) and the seed
augmentations (albumentations), so neither is the bottleneck of `edge train`.

    .venv/bin/python scripts/bench_augment.py [IMAGE_DIR] [--size 224] [--n 200]

Without IMAGE_DIR it uses synthetic cells (edge.synthetic). Prints one line per stage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.augment import throughput  # noqa: E402
from edge.image_files import images_in  # noqa: E402
from edge.preprocess import PreprocessSpec, preprocess_file  # noqa: E402
from edge.synthetic import make_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image_dir", nargs="?", help="folder searched recursively for images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=200, help="number of images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.image_dir) if args.image_dir else Path(tmp)
        if not args.image_dir:
            make_dataset(root, per_class=max(1, args.n // 5), seed=0)
        files = images_in(root)[: args.n]
        spec = PreprocessSpec(size=args.size)
        start = time.perf_counter()
        images = np.stack([preprocess_file(f, spec) for f in files])
        pre = len(files) / (time.perf_counter() - start)
    aug = throughput(images, seed=0, repeats=2)
    print(f"images {len(files)} from {args.image_dir or 'synthetic'}, size {args.size}")
    print(f"decode + preprocess (1 thread):     {pre:8.1f} images/s")
    print(f"seed augmentations (1 thread):      {aug:8.1f} images/s")
    print(
        "for comparison (docs/training.md): MobileNetV2 224 trains at ~11 images/s whole-network on 2 cores"
    )


if __name__ == "__main__":
    main()
