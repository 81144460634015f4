"""`edge detect BUNDLE PATH...`: find the white cells in each image, crop each by the crop rule, classify."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from edge.runtime import BACKENDS
from edge.runtime.tflite import RUNTIME_CHOICES


def default_detector() -> Path:
    """The committed detector, found like the default classifier (edge.bundle.find_bundle)."""
    from edge.bundle import find_bundle
    from edge.daemon.config import DEFAULT_DETECTOR

    return find_bundle(DEFAULT_DETECTOR)


def image_record(path, image, detections, predictions, crops, timings) -> dict:
    """What --json prints for one image: its size and every cell, box in the image's own pixels."""
    cells = []
    preds = iter(predictions)
    for det, square in zip(detections, crops, strict=True):
        cell = {"box": list(det.int_box()), "score": round(det.score, 4), "kind": det.kind}
        if det.kind == "wbc":
            p = next(preds)
            cell.update(
                label=p.label,
                confidence=round(p.confidence, 4),
                uncertain=p.uncertain,
                reason=p.reason,
                top_k=[[n, round(v, 4)] for n, v in p.top_k],
                crop=list(square),
            )
        cells.append(cell)
    return {
        "path": str(path),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "cells": cells,
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }


def _text(record: dict) -> str:
    white = [c for c in record["cells"] if c["kind"] == "wbc"]
    if not white:
        return f"{record['path']}\tno white cell"
    return "\n".join(
        f"{record['path']}\t#{i + 1}\t{' '.join(map(str, c['box']))}\tcell {c['score']:.2f}\t{c['label']}\t"
        f"{c['confidence']:.3f}\t{'UNCERTAIN' if c['uncertain'] else 'ok'}"
        for i, c in enumerate(white)
    )


def _plot_name(path: Path, used: set[str]) -> str:
    name = f"{path.stem}.jpg"
    k = 1
    while name in used:
        k += 1
        name = f"{path.stem}-{k}.jpg"
    used.add(name)
    return name


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(path_type=str))
@click.option(
    "--detector",
    "detector_path",
    type=click.Path(path_type=Path),
    help="Detector bundle [default: models/wbc-detector-int8].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per image (JSON Lines), errors included."
)
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each image with its boxes and labels drawn into this folder.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Detector score a box needs [default: the detector bundle's operating threshold].",
)
@click.option("--top-k", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="cpu", show_default=True)
@click.option("--device", default=None, metavar="DEV", help="Edge TPU: usb, usb:0, pci:0 ...")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Interpreter threads [all cores].")
def detect(
    bundle, paths, detector_path, as_json, plot_dir, threshold, top_k, backend, device, runtime, threads
):
    """Find every white cell in the images in PATH... (files, or folders searched recursively), crop
    each as the classifier BUNDLE's training images framed their cells, and classify it.

    \b
    Prints one line per white cell: path, cell number, box (x y w h in the image's pixels), the
    detector's score, label, confidence, ok/UNCERTAIN; "no white cell" for an image without one. A
    file that cannot be read gets an error line on stderr naming it; the others are still processed,
    and the exit code is then 1.

    \b
    Examples:
      edge detect models/mobilenetv2-int8 field.jpg
      edge detect models/mobilenetv2-int8 frames/ --json > cells.jsonl
      edge detect --detector models/wbc-detector-int8 models/mobilenetv2-int8 frames/ --plot out/
    """
    import cv2

    from edge.bundle import Bundle
    from edge.dataset import IMAGE_SUFFIXES, expand_paths
    from edge.detect.crop import crop_cell
    from edge.detect.detector import Detector
    from edge.errors import DataError, ImageLoadError
    from edge.predict import Classifier
    from edge.preprocess import load_image, to_bgr8

    options = {"runtime": runtime, "threads": threads, "device": device}
    classifier = Classifier.open(Bundle.load(bundle), backend, top_k=top_k, **options)
    detector = Detector.open(Bundle.load(detector_path or default_detector()), backend, **options)
    rule = detector.spec.crop
    files = expand_paths(paths)
    if not files:
        raise DataError(
            f"no images found in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    out = click.get_text_stream("stdout")
    failed = cells = 0
    used: set[str] = set()
    t0 = time.perf_counter()
    for path in files:
        try:
            image = to_bgr8(load_image(path))
        except (ImageLoadError, ValueError) as exc:
            failed += 1
            reason = exc.reason if isinstance(exc, ImageLoadError) else str(exc)
            click.echo(f"error: {path}: {reason}", err=True)
            if as_json:
                out.write(json.dumps({"path": str(path), "error": reason}) + "\n")
            continue
        detections, timings = detector.detect(image, threshold=threshold)
        timings = {f"detect_{k}": v for k, v in timings.items()}
        crops = [crop_cell(image, d.box, rule) for d in detections]
        white = [c for c, d in zip(crops, detections, strict=True) if d.kind == "wbc"]
        predictions = []
        if white:
            predictions, stages = classifier.classify_images([c[0] for c in white])
            timings.update({f"classify_{k}": v for k, v in stages.items()})
        record = image_record(path, image, detections, predictions, [c[1] for c in crops], timings)
        cells += len(white)
        out.write((json.dumps(record) if as_json else _text(record)) + "\n")
        if plot_dir is not None:
            from edge.detect.draw import draw_cells

            cv2.imwrite(str(plot_dir / _plot_name(Path(path), used)), draw_cells(image, record["cells"]))
    seconds = time.perf_counter() - t0
    click.echo(
        f"{len(files) - failed} images, {cells} white cells, {failed} failed in {seconds:.1f} s "
        f"(detector {detector.bundle.path.name} at {threshold if threshold is not None else detector.threshold:.3f}, "
        f"crop rule: cell = {rule.cell_fraction:g} of the crop's side)"
        + (f"; drawn into {plot_dir}" if plot_dir is not None else ""),
        err=True,
    )
    sys.stdout.flush()
    return 1 if failed else 0
