#!/usr/bin/env python3
"""Bring a bundle written by edge 0.1 (manifest schema 1) to schema 2: seal its labels, preprocessing
and flagging rules into model.tflite (edge/contract.py), as `edge quantize` now does.

    python scripts/seal_bundle.py models/mobilenetv2-int8

Only for a bundle you trust as it is: it first checks every file against the sha256 its manifest
records, so it seals what `edge quantize` wrote, not an edited copy. The model's weights are not
touched; its sha256 changes because the metadata is part of the file. Needs a TFLite schema module
(the device extra). model_edgetpu.tflite, if present, is compiled from the old model.tflite and is
dropped: run `edge compile` again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    args = ap.parse_args(argv)

    from edge.bundle import CPU_MODEL, EDGETPU_MODEL, MANIFEST, SCHEMA_VERSION, Bundle, Manifest, write_bundle
    from edge.hashing import sha256_file

    root = Path(args.bundle)
    raw = json.loads((root / MANIFEST).read_text())
    if raw.get("schema_version") != 1:
        print(f"{root}: schema {raw.get('schema_version')}, nothing to do", file=sys.stderr)
        return 1
    for name, digest in raw["files"].items():
        if sha256_file(root / name) != digest:
            print(f"{root / name}: does not match its manifest; refusing to seal it", file=sys.stderr)
            return 1
    model = (root / CPU_MODEL).read_bytes()
    raw["files"] = {}
    raw["schema_version"] = SCHEMA_VERSION
    raw.pop("edgetpu", None)
    (root / EDGETPU_MODEL).unlink(missing_ok=True)
    write_bundle(root, {CPU_MODEL: model}, Manifest.model_validate(raw))
    bundle = Bundle.load(root)
    print(f"sealed {root}: {CPU_MODEL} sha256 {bundle.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
