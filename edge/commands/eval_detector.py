"""`edge eval-detector DETECTOR VOC_DIR`: AP, precision / recall at the operating threshold, false
positives per frame and time per frame; `--centred` for folders of single-cell images instead."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge.batch import Inference
from edge.bundle import Bundle
from edge.commands._device_options import backend_options, progress
from edge.commands._options import detector_threshold_option, json_flag, plot_file_option, seed_option
from edge.detect.centred import NOT_WHITE, centred_report
from edge.detect.classical import ClassicalDetector
from edge.detect.detector import Detector
from edge.detect.eval_run import EvalRun, frames_to_score, run_on_frames
from edge.detect.pr_plot import write_pr_png
from edge.errors import DataError

CLASSICAL = "classical"


def _open(detector: str, inference: Inference):
    if detector == CLASSICAL:
        return ClassicalDetector()
    options = inference.backend_options(inference.threads)
    return Detector.open(Bundle.load(detector), inference.backend, **options)


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
@detector_threshold_option("Operating threshold for precision / recall [default: the bundle's].")
@json_flag("Print the report as JSON.")
@plot_file_option("Write the precision-recall curve (PNG). VOC folders only.")
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
@seed_option()
@backend_options
def eval_detector(
    detector, voc_dir, split, threshold, as_json, plot_path, centred, per_class, seed, inference: Inference
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
    det = _open(detector, inference)
    name = (
        "classical (nucleus colour threshold + connected components)" if detector == CLASSICAL else detector
    )
    if threshold is not None:
        det.threshold = threshold
    if centred:
        report = centred_report(det, voc_dir, per_class, seed)
        for e in report["errors"]:
            click.echo(f"error: {e}", err=True)
        header = {"detector": name, "data": str(voc_dir), "threshold": det.threshold}
        click.echo(
            json.dumps({**header, **report}, indent=2) if as_json else format_centred(report, name, det)
        )
        return 1 if report["errors"] else 0
    if not (voc_dir / "Annotations").is_dir():
        raise DataError(
            f"{voc_dir}: no Annotations/ (a VOC folder); for single-cell image folders use --centred"
        )
    frames, what = frames_to_score(det, voc_dir, split)
    with progress(iter(frames), len(frames), "detecting", not as_json) as items:
        run = run_on_frames(det, list(items))
    for e in run.errors:
        click.echo(f"error: {e}", err=True)
    if as_json:
        report = {
            "detector": name,
            "data": what,
            **run.report.to_dict(),
            "ms_per_frame_p50": run.time_per_frame(),
        }
        click.echo(json.dumps({**report, "errors": run.errors}, indent=2))
    else:
        click.echo(format_frames(run, name, what))
    if plot_path:
        write_pr_png(plot_path, run.report, f"{Path(detector).name}: {what}")
        if not as_json:
            click.echo(f"wrote {plot_path}")
    return 1 if run.errors else 0


def format_centred(report: dict, name: str, det) -> str:
    lines = []
    for folder, r in report["folders"].items():
        f = r["cell_side_fraction"]
        lines.append(
            f"{folder:<16} {r['found']:>5} of {r['images']:<5} found over the centre "
            f"({100 * (r['found_fraction'] or 0):.1f} %); cell side / image side median {f['median']} "
            f"(IQR {f['p25']}-{f['p75']})" + ("   [not a white cell]" if folder.lower() in NOT_WHITE else "")
        )
    w = report["white_cells"]
    f = w["cell_side_fraction"]
    lines.append(
        f"white cells ({', '.join(report['white_cell_folders'])}): {w['found']} of {w['images']} found "
        f"({100 * (w['found_fraction'] or 0):.2f} %); cell side / image side median "
        f"{f['median']} (IQR {f['p25']}-{f['p75']}); detector {name} at {det.threshold:.3f}"
    )
    return "\n".join(lines)


def format_frames(run: EvalRun, name: str, what: str) -> str:
    r, times = run.report, run.time_per_frame()
    return "\n".join(
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
