"""`edge eval-detector DETECTOR VOC_DIR`: AP, precision / recall at the operating threshold, false
positives per frame and time per frame; `--centred` for folders of single-cell images instead."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge.runtime import BACKENDS
from edge.runtime.tflite import RUNTIME_CHOICES

CLASSICAL = "classical"
# Folders of single-cell images that hold no white cell: reported apart from the others.
NOT_WHITE = ("platelet", "platelets", "erythroblast", "erythroblasts")


def _open(detector: str, backend: str, options: dict):
    if detector == CLASSICAL:
        from edge.detect.classical import ClassicalDetector

        return ClassicalDetector()
    from edge.bundle import Bundle
    from edge.detect.detector import Detector

    return Detector.open(Bundle.load(detector), backend, **options)


def _frames(detector, voc: Path, split: str):
    """The frames to score and what they are: the detector's own val frames when it records a split
    for these frames (auto / val), the hash split of edge.detect.voc otherwise."""
    from edge.detect.voc import assign_splits, read_voc, split_frames

    frames = read_voc(voc)
    recorded = None
    bundle = getattr(detector, "bundle", None)
    if bundle is not None:
        recorded = (
            bundle.manifest.training.get("split") if isinstance(bundle.manifest.training, dict) else None
        )
    names = {f.image.name for f in frames}
    if recorded and split in ("auto", "val", "train"):
        wanted = (
            set(recorded["val"]["files"])
            if split in ("auto", "val")
            else set(recorded["fit"]["files"] + recorded["tune"]["files"])
        )
        if wanted & names:
            chosen = [f for f in frames if f.image.name in wanted]
            return (
                chosen,
                f"{voc.name}/{'val' if split == 'auto' else split} (the split the detector recorded)",
            )
    if split == "auto":
        return frames, f"{voc.name} (all {len(frames)} frames: the detector records no split of them)"
    return split_frames(frames, split, assign_splits(frames)), f"{voc.name}/{split} (edge.detect.voc's split)"


def _centred(detector, root: Path, per_class: int, seed: int, keep_fractions: bool = False) -> dict:
    """Single-cell images (class folders): is a white cell found over the image centre, and which
    fraction of the image's shorter side does it span (the crop rule's measure)?"""
    import numpy as np

    from edge.image_files import images_in, subfolders
    from edge.preprocess import load_image, to_bgr8

    folders = subfolders(root) or [root]
    rng = np.random.default_rng(seed)
    out, errors = {}, []
    for folder in folders:
        files = images_in(folder)
        if per_class and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        found, fractions, ms = 0, [], []
        for path in files:
            try:
                image = to_bgr8(load_image(path))
            except Exception as exc:  # noqa: BLE001 - a bad file is one line, not the end of the run
                errors.append(f"{path}: {exc}")
                continue
            dets, stages = detector.detect(image)
            ms.append(sum(stages.values()))
            h, w = image.shape[:2]
            over = [
                d
                for d in dets
                if d.kind == "wbc"
                and d.box[0] <= w / 2 <= d.box[0] + d.box[2]
                and d.box[1] <= h / 2 <= d.box[1] + d.box[3]
            ]
            if over:
                found += 1
                best = max(over, key=lambda d: d.score)
                fractions.append(max(best.box[2], best.box[3]) / min(h, w))
        n = len(files)
        q = np.percentile(fractions, [25, 50, 75]).round(3).tolist() if fractions else [None] * 3
        out[folder.name] = {
            "images": n,
            "found": found,
            "found_fraction": round(found / n, 4) if n else None,
            "cell_side_fraction": {"p25": q[0], "median": q[1], "p75": q[2], "n": len(fractions)},
            "ms_per_image_p50": round(float(np.median(ms)), 3) if ms else None,
            "_fractions": fractions,
        }
    white = [k for k in out if k.lower() not in NOT_WHITE]
    n = sum(out[k]["images"] for k in white)
    found = sum(out[k]["found"] for k in white)
    pooled = [f for k in white for f in out[k]["_fractions"]]
    for v in out.values():
        fractions = v.pop("_fractions")
        if keep_fractions:
            v["fractions"] = fractions
    q = np.percentile(pooled, [25, 50, 75]).round(3).tolist() if pooled else [None] * 3
    return {
        "folders": out,
        "white_cell_folders": white,
        "white_cells": {
            "images": n,
            "found": found,
            "found_fraction": round(found / n, 4) if n else None,
            "cell_side_fraction": {"p25": q[0], "median": q[1], "p75": q[2], "n": len(pooled)},
        },
        "errors": errors,
    }


@click.command()
@click.argument("detector", metavar="DETECTOR_BUNDLE|classical")
@click.argument("voc_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--split",
    type=click.Choice(["auto", "val", "train", "all"]),
    default="auto",
    show_default=True,
    help="auto: the detector's own val frames when it records them, else every frame.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Operating threshold for precision / recall [default: the bundle's].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the precision-recall curve (PNG). VOC folders only.",
)
@click.option(
    "--centred",
    is_flag=True,
    help="VOC_DIR holds single-cell images (class folders, no annotations): report in how many a white "
    "cell is found over the centre, and the fraction of the image's side it spans.",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=0),
    default=0,
    help="--centred: at most this many images per folder (seeded sample; 0: all).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="cpu", show_default=True)
@click.option("--device", default=None, metavar="DEV")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None)
def eval_detector(
    detector,
    voc_dir,
    split,
    threshold,
    as_json,
    plot_path,
    centred,
    per_class,
    seed,
    backend,
    device,
    runtime,
    threads,
):
    """Score a detector bundle (or `classical`, the colour-threshold baseline) on the annotated frames
    of VOC_DIR (Annotations/ + JPEGImages/): AP@0.5 and AP@0.5:0.95 for white cells, precision and
    recall at the operating threshold, false positives per frame, and the time per frame.

    \b
    Examples:
      edge eval-detector models/wbc-detector-int8 ../shared/data/bccd-frames --plot pr.png
      edge eval-detector classical ../shared/data/bccd-frames --split val
      edge eval-detector models/wbc-detector-int8 ../shared/data/pbc-8class/val --centred
    """
    from edge.errors import DataError

    det = _open(detector, backend, {"runtime": runtime, "threads": threads, "device": device})
    name = (
        "classical (nucleus colour threshold + connected components)" if detector == CLASSICAL else detector
    )
    if threshold is not None:
        det.threshold = threshold
    if centred:
        report = _centred(det, voc_dir, per_class, seed)
        for e in report["errors"]:
            click.echo(f"error: {e}", err=True)
        if as_json:
            click.echo(
                json.dumps(
                    {"detector": name, "data": str(voc_dir), "threshold": det.threshold, **report}, indent=2
                )
            )
            return 1 if report["errors"] else 0
        for folder, r in report["folders"].items():
            f = r["cell_side_fraction"]
            click.echo(
                f"{folder:<16} {r['found']:>5} of {r['images']:<5} found over the centre "
                f"({100 * (r['found_fraction'] or 0):.1f} %); cell side / image side median {f['median']} "
                f"(IQR {f['p25']}-{f['p75']})"
                + ("   [not a white cell]" if folder.lower() in NOT_WHITE else "")
            )
        w = report["white_cells"]
        click.echo(
            f"white cells ({', '.join(report['white_cell_folders'])}): {w['found']} of {w['images']} found "
            f"({100 * (w['found_fraction'] or 0):.2f} %); cell side / image side median "
            f"{w['cell_side_fraction']['median']} (IQR {w['cell_side_fraction']['p25']}-{w['cell_side_fraction']['p75']}); "
            f"detector {name} at {det.threshold:.3f}"
        )
        return 1 if report["errors"] else 0
    if not (voc_dir / "Annotations").is_dir():
        raise DataError(
            f"{voc_dir}: no Annotations/ (a VOC folder); for single-cell image folders use --centred"
        )
    from edge.commands._device_options import progress
    from edge.detect.eval_run import run_on_frames

    frames, what = _frames(det, voc_dir, split)
    with progress(iter(frames), len(frames), "detecting", not as_json) as items:
        run = run_on_frames(det, list(items))
    for e in run.errors:
        click.echo(f"error: {e}", err=True)
    r = run.report
    times = run.time_per_frame()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "detector": name,
                    "data": what,
                    **r.to_dict(),
                    "ms_per_frame_p50": times,
                    "errors": run.errors,
                },
                indent=2,
            )
        )
    else:
        click.echo(
            "\n".join(
                [
                    f"detector   {name}",
                    f"data       {what}: {r.frames} frames, {r.objects} white cells ({r.ignored} ignored boxes)",
                    f"AP         @0.5 {r.ap50:.4f}   @0.5:0.95 {r.ap50_95:.4f}",
                    f"at {r.threshold:.3f}   precision {r.precision:.4f}, recall {r.recall:.4f} ({r.hits} found, "
                    f"{r.misses} missed, {r.false_positives} false positives in {r.frames_with_false_positive} frames)",
                    f"false positives per frame {r.false_positives_per_frame:.4f}",
                    "time/frame p50 (ms) " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()),
                ]
            )
        )
    if plot_path:
        from edge.detect.pr_plot import write_pr_png

        write_pr_png(plot_path, r, f"{Path(detector).name}: {what}")
        if not as_json:
            click.echo(f"wrote {plot_path}")
    return 1 if run.errors else 0
