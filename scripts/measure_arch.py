#!/usr/bin/env python3
"""What differs between two CPU architectures (docs/device.md, issue 26): run `dump` on each machine
(arm64: in the root scripts/arm64_check.sh builds, ARM64_KEEP=1), then `compare` the two files.

    python scripts/measure_arch.py dump ../shared/data/blood-5class/val --out x86.json
    (in the arm64 root)  python measure_arch.py dump /data/blood-5class/val --out arm64.json
    python scripts/measure_arch.py compare x86.json arm64.json

`dump` takes 40 images per class of the folder (sorted names: the same images on both machines), and
records for each the sha256 of its preprocessed bytes under version 1 (the classifier's spec before
it was re-made) and version 2 (its spec now), the classifier's raw int8 scores, label and uncertain
flag on the version-2 input, and for every committed bundle with a golden check the raw outputs of
every synthetic candidate input (edge/golden.py) as that machine computes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import golden  # noqa: E402
from edge.bundle import Bundle, find_bundle  # noqa: E402
from edge.dataset import scan_labelled  # noqa: E402
from edge.imagefile import load_image, to_bgr8  # noqa: E402
from edge.predict import Classifier  # noqa: E402
from edge.preprocess import PreprocessSpec, preprocess  # noqa: E402
from edge.runtime.tflite import TFLiteModel  # noqa: E402


def sha(tensor: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tensor).tobytes()).hexdigest()


def images_of(folder: Path, per_class: int) -> list[Path]:
    found = scan_labelled(folder)
    by_class: dict[int, list[Path]] = {}
    for item in sorted(found.items, key=lambda i: str(i.path)):
        by_class.setdefault(item.label, []).append(item.path)
    return [p for c in sorted(by_class) for p in by_class[c][:per_class]]


def candidates(bundle: Bundle) -> dict:
    """Every golden candidate input's raw outputs, on this machine."""
    m = bundle.manifest
    runner = TFLiteModel(bundle.model_path(), threads=1)
    roles = golden.roles(m)
    index = {role: golden._output_index(runner.outputs, m, role) for role in roles}
    out = {}
    for case in golden.detector_cases() if m.task == "detector" else golden.classifier_cases():
        tensor = preprocess(case.image, m.preprocess, view=case.view)
        runner.set_input(tensor[None])
        runner.invoke()
        out[case.name] = {
            "input": sha(tensor),
            **{r: runner.raw(i)[0].ravel().tolist() for r, i in index.items()},
        }
    return out


def dump(args) -> dict:
    bundle = Bundle.load(find_bundle(args.bundle) if "/" not in args.bundle else args.bundle)
    v2 = bundle.preprocess_spec
    before = bundle.manifest.model.get("remade", {}).get("preprocess_before")
    v1 = PreprocessSpec.model_validate(before) if before else v2
    classifier = Classifier.open(bundle, "cpu", threads=1)
    rows = []
    for path in images_of(args.folder, args.per_class):
        image = to_bgr8(load_image(path))
        t1, t2 = preprocess(image, v1), preprocess(image, v2)
        pred = classifier.classify_tensors(t2[None])[0]
        out = bundle.manifest.output  # the scores as the model's own uint8 codes
        raw = np.rint(
            np.array([pred.probabilities[n] for n in bundle.labels]) / out.scale + out.zero_point
        ).astype(int)
        rows.append(
            {
                "image": f"{path.parent.name}/{path.name}",
                "v1": sha(t1),
                "v2": sha(t2),
                "scores": raw.tolist(),
                "label": pred.label,
                "uncertain": bool(pred.uncertain),
            }
        )
    models = Path(args.models)
    golden_outputs = {
        p.name: candidates(Bundle.load(p))
        for p in sorted(models.iterdir())
        if (p / "manifest.json").is_file() and Bundle.load(p).manifest.golden is not None
    }
    return {
        "machine": platform.machine(),
        "bundle": bundle.path.name,
        "v1_spec": v1.to_dict(),
        "v2_spec": v2.to_dict(),
        "images": rows,
        "golden_candidates": golden_outputs,
    }


def compare(a: dict, b: dict) -> dict:
    rows = list(zip(a["images"], b["images"], strict=True))
    assert all(x["image"] == y["image"] for x, y in rows)
    same_v2 = [x["v2"] == y["v2"] for x, y in rows]
    steps = [int(np.abs(np.array(x["scores"]) - np.array(y["scores"])).max()) for x, y in rows]
    identical_inputs = [s for s, same in zip(steps, same_v2, strict=True) if same]
    differ = [(x, y) for x, y in rows if x["label"] != y["label"]]
    worst = {}
    for name, cases in a["golden_candidates"].items():
        other = b["golden_candidates"].get(name, {})
        per_case = {}
        for case, outs in cases.items():
            if case not in other:
                continue
            roles = [k for k in outs if k != "input"]
            per_case[case] = {
                "input_identical": outs["input"] == other[case]["input"],
                "max_steps": max(
                    int(np.abs(np.array(outs[r]) - np.array(other[case][r])).max()) for r in roles
                ),
            }
        worst[name] = per_case
    return {
        "machines": [a["machine"], b["machine"]],
        "images": len(rows),
        "preprocessed_identical_v1": sum(x["v1"] == y["v1"] for x, y in rows),
        "preprocessed_identical_v2": sum(same_v2),
        "scores_identical": sum(s == 0 for s in steps),
        "scores_max_steps": max(steps),
        "scores_max_steps_on_identical_inputs": max(identical_inputs) if identical_inputs else None,
        "steps_histogram": {str(k): steps.count(k) for k in sorted(set(steps))},
        "labels_same": len(rows) - len(differ),
        "label_differences": [
            {
                "image": x["image"],
                "labels": [x["label"], y["label"]],
                "uncertain": [x["uncertain"], y["uncertain"]],
            }
            for x, y in differ
        ],
        "uncertain_differs": sum(x["uncertain"] != y["uncertain"] for x, y in rows),
        "golden_candidates": worst,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("folder", type=Path)
    d.add_argument("--bundle", default="mobilenetv2-int8")
    d.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "models"))
    d.add_argument("--per-class", type=int, default=40)
    d.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.command == "dump":
        args.out.write_text(json.dumps(dump(args)) + "\n")
        return 0
    print(json.dumps(compare(json.loads(args.a.read_text()), json.loads(args.b.read_text())), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
