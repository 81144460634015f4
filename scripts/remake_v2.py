#!/usr/bin/env python3
"""Re-make a committed bundle with preprocessing version 2 and a golden check (issue 26), keeping its
model's weights, and show whether it keeps its decisions.

    python scripts/remake_v2.py models/mobilenetv2-int8 --from 1d83cd8 --grid 7 \\
        --eval ../shared/data/blood-5class/val --eval ../shared/data/pbc-8class/val --write

The float models of the committed bundles are gone, so only the preprocessing changes: version 2 (the
same steps, each bit-exact on every CPU: edge/preprocess_exact.py), CLAHE tiles of a power-of-two
side (`--grid`), the golden file, and the sealed contract (write_bundle seals it again). The original
comes from git (`--from REV`: models/NAME at that revision), so the script can be run again on a
checkout that already holds the result.

Decisions are compared image by image: the version-1 bundle and the version-2 bundle classify every
image of each --eval folder on the CPU backend (the device's path). Agreement and accuracy are over
the images whose folder is one of the bundle's labels (agreement_all: every image, other cells too). A detector is scored by
`edge eval-detector` on its own val frames (--eval: the VOC folder). The bundle is kept at version 1
(nothing written) unless agreement >= 99.5 % on every folder and accuracy (AP@0.5) is not lower by
more than 0.2 percentage points; --write replaces the bundle's model.tflite, manifest.json and adds
golden.npz (model.onnx and MODEL_CARD.md stay), with the manifest's metrics of the bundle's own model
measured again. `--version 1` keeps a bundle's preprocessing and only adds the golden check (for a
bundle that version 2 changes). Prints the numbers as JSON; exits 3 when the bundle does not keep
its decisions.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edge import golden  # noqa: E402
from edge.bundle import CPU_MODEL, MANIFEST, Bundle, Metric, write_bundle  # noqa: E402
from edge.dataset import scan_labelled  # noqa: E402
from edge.imagefile import load_image, to_bgr8  # noqa: E402
from edge.metrics import classification_report  # noqa: E402
from edge.predict import Classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIN_AGREEMENT = 0.995
MAX_DROP = 0.002  # accuracy or AP@0.5, absolute
# the manifest's metrics of the bundle's own model that are measured again (the float model is gone)
REMEASURED = (
    "accuracy",
    "macro_f1",
    "flagged_fraction",
    "accuracy_unflagged",
    "ap50",
    "ap50_95",
    "precision",
    "recall",
    "false_positives_per_frame",
)


def original(bundle: Path, rev: str | None, into: Path) -> Path:
    """The bundle as it was at `rev` (git), or as it is."""
    if rev is None:
        return bundle
    rel = bundle.resolve().relative_to(ROOT).as_posix()
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, rel], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / rel


def remade(source: Bundle, version: int, grid: int | None, out: Path, command: str) -> Bundle:
    """`source` with preprocessing `version` and a golden check, written to `out`."""
    shutil.copytree(source.path, out)  # model.onnx and the card come along, their hashes recorded
    manifest = copy.deepcopy(source.manifest)
    before = manifest.preprocess
    if version == 2:
        manifest.preprocess = before.replace(version=2, clahe_tile_grid=grid or before.clahe_tile_grid)
    model = (source.path / CPU_MODEL).read_bytes()
    manifest.golden, data = golden.make(model, manifest)
    manifest.model = {
        **manifest.model,
        "remade": {
            "why": f"preprocessing version {version} and a golden check (issue 26); weights unchanged"
            + ("" if version == 2 else "; version 2 changed its decisions (see its model card)"),
            "from_sha256": source.sha256,
            "preprocess_before": before.to_dict(),
            "command": command,
        },
    }
    write_bundle(out, {CPU_MODEL: model, golden.GOLDEN_FILE: data}, manifest)
    return Bundle.load(out)


def classify_folder(bundle: Bundle, folder: Path) -> dict:
    """Labels, uncertain flags and truth (-1 where the folder is not a label) for every image."""
    images = scan_labelled(folder, labels=bundle.labels, keep_unknown=True)
    classifier = Classifier.open(bundle, "cpu")
    labels, flagged = [], []
    for start in range(0, len(images), 32):
        batch = [to_bgr8(load_image(p)) for p in images.files[start : start + 32]]
        predictions, _ = classifier.classify_images(batch)
        labels += [bundle.labels.index(p.label) for p in predictions]
        flagged += [bool(p.uncertain) for p in predictions]
    classifier.backend.close()
    return {"label": np.array(labels), "flagged": np.array(flagged), "truth": images.targets}


def scores(run: dict, labels: list[str]) -> dict:
    known = run["truth"] >= 0
    if not known.any():
        return {}
    right = run["label"][known] == run["truth"][known]
    unflagged = known & ~run["flagged"]
    present = sorted(set(run["truth"][known].tolist()))  # macro F1 over the classes the folder holds
    report = classification_report(run["truth"][known], run["label"][known], labels)
    return {
        "n_known": int(known.sum()),
        "accuracy": round(float(right.mean()), 6),
        "macro_f1": round(float(np.mean([report["per_class"][labels[c]]["f1"] for c in present])), 6),
        "flagged_fraction": round(float(run["flagged"][known].mean()), 6),
        "accuracy_unflagged": round(float((run["label"] == run["truth"])[unflagged].mean()), 6)
        if unflagged.any()
        else None,
    }


def compare_classifier(old: Bundle, new: Bundle, folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        a, b = classify_folder(old, folder), classify_folder(new, folder)
        row = {"folder": str(folder), "split": "/".join(folder.resolve().parts[-2:])}
        # where the classes fit (the folder is a label), and over every image (other cells too)
        for key, where in (("", a["truth"] >= 0), ("_all", np.ones(len(a["label"]), bool))):
            differ = where & (a["label"] != b["label"])
            row[f"n{key}"] = int(where.sum())
            row[f"same_label{key}"] = int(where.sum() - differ.sum())
            row[f"agreement{key}"] = round(1 - differ.sum() / max(1, where.sum()), 6)
            row[f"differing_flagged_on_a_side{key}"] = int((differ & (a["flagged"] | b["flagged"])).sum())
        row["version_1"], row["version_2"] = scores(a, old.labels), scores(b, new.labels)
        rows.append(row)
    return rows


def eval_detector(bundle: Path, voc: Path) -> dict:
    cmd = [sys.executable, "-m", "edge.cli", "eval-detector", str(bundle), str(voc), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out)


def compare_detector(old: Bundle, new: Bundle, folders: list[Path]) -> list[dict]:
    rows = []
    for voc in folders:
        a, b = eval_detector(old.path, voc), eval_detector(new.path, voc)
        keys = ("ap50", "ap50_95", "precision", "recall", "false_positives_per_frame", "frames")
        rows.append(
            {
                "folder": str(voc),
                "split": f"{voc.resolve().name}/val",  # eval-detector takes the detector's own val frames
                "version_1": {k: a[k] for k in keys},
                "version_2": {k: b[k] for k in keys},
            }
        )
    return rows


def keeps_decisions(rows: list[dict], detector: bool) -> bool:
    for row in rows:
        if detector:
            if row["version_2"]["ap50"] < row["version_1"]["ap50"] - MAX_DROP:
                return False
            continue
        if row["agreement"] < MIN_AGREEMENT:
            return False
        v1, v2 = row["version_1"], row["version_2"]
        if v1 and v2["accuracy"] < v1["accuracy"] - MAX_DROP:
            return False
    return True


def remeasured_metrics(new: Bundle, rows: list[dict], command: str) -> list[Metric]:
    """The manifest's int8 metrics on the folders that were measured again, with version 2; the float
    model's (and any others) stay as they were recorded."""
    metrics = list(new.manifest.metrics)
    for row in rows:
        fresh = row["version_2"]
        for i, m in enumerate(metrics):
            if m.split == row["split"] and m.name in REMEASURED and fresh.get(m.name) is not None:
                metrics[i] = m.replace(value=round(float(fresh[m.name]), 6), command=command)
    return metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--from", dest="rev", help="take models/NAME as it was at this git revision")
    ap.add_argument("--grid", type=int, help="CLAHE tiles per side for version 2 (size / grid a power of 2)")
    ap.add_argument(
        "--version",
        type=int,
        choices=(1, 2),
        default=2,
        help="1: keep version 1 and only add the golden check (a bundle that version 2 changes)",
    )
    ap.add_argument("--eval", type=Path, action="append", default=[], help="held-out folder (repeatable)")
    ap.add_argument("--write", action="store_true", help="replace the bundle when it keeps its decisions")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "scripts/remake_v2.py", *(argv or sys.argv[1:])])
    with tempfile.TemporaryDirectory() as tmp:
        old = Bundle.load(original(args.bundle, args.rev, Path(tmp) / "from"))
        if old.preprocess_spec.version != 1:
            print(
                f"{args.bundle}: already preprocessing version {old.preprocess_spec.version}", file=sys.stderr
            )
            return 1
        new = remade(old, args.version, args.grid, Path(tmp) / "new", command)
        detector = new.is_detector
        rows = (compare_detector if detector else compare_classifier)(old, new, args.eval)
        keep = keeps_decisions(rows, detector)
        report = {
            "bundle": str(args.bundle),
            "preprocess": new.preprocess_spec.to_dict(),
            "golden": [(i.name, i.top) for i in new.manifest.golden.inputs],
            "comparison": rows,
            "keeps_its_decisions": keep,
        }
        if keep and args.write:
            manifest = new.manifest
            manifest.metrics = remeasured_metrics(new, rows, command)
            manifest.files = {k: v for k, v in manifest.files.items() if k != CPU_MODEL}
            model = (new.path / CPU_MODEL).read_bytes()
            write_bundle(new.path, {CPU_MODEL: model}, manifest)
            for name in (CPU_MODEL, MANIFEST, golden.GOLDEN_FILE):
                shutil.copyfile(new.path / name, args.bundle / name)
            report["written"] = str(Bundle.load(args.bundle).path)
        print(json.dumps(report, indent=2))
    return 0 if keep else 3


if __name__ == "__main__":
    sys.exit(main())
