"""`edge detect BUNDLE PATH...`: find the white cells in each image, crop each by the crop rule, classify."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import cv2

from edge.batch import Inference
from edge.bundle import Bundle, find_bundle
from edge.commands._device_options import backend_options
from edge.commands._options import detector_threshold_option, json_flag, top_k_option
from edge.daemon.config import DEFAULT_DETECTOR
from edge.detect.cells import find_cells
from edge.detect.detector import Detector
from edge.detect.draw import draw_cells
from edge.errors import DataError, ImageLoadError
from edge.image_files import IMAGE_SUFFIXES, expand_paths
from edge.predict import Classifier
from edge.preprocess import load_image, to_bgr8
from edge.wording import plural


def default_detector() -> Path:
    """The committed detector, found like the default classifier (edge.bundle.find_bundle)."""
    return find_bundle(DEFAULT_DETECTOR)


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
@json_flag("One JSON object per image (JSON Lines), errors included.")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each image with its boxes and labels drawn into this folder.",
)
@detector_threshold_option("Detector score a box needs [default: the detector bundle's operating threshold].")
@top_k_option
@backend_options
def detect(bundle, paths, detector_path, as_json, plot_dir, threshold, top_k, inference: Inference):
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
    options = inference.backend_options(inference.threads)
    classifier = Classifier.open(Bundle.load(bundle), inference.backend, top_k=top_k, **options)
    detector = Detector.open(Bundle.load(detector_path or default_detector()), inference.backend, **options)
    files = expand_paths(paths)
    if not files:
        raise DataError(
            f"no images found in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    failed, cells = _write(files, detector, classifier, threshold, as_json, plot_dir)
    seconds = time.perf_counter() - t0
    rule = detector.spec.crop
    click.echo(
        f"{plural(len(files) - failed, 'image')}, {plural(cells, 'white cell')}, {failed} failed in {seconds:.1f} s "
        f"(detector {detector.bundle.path.name} at {threshold if threshold is not None else detector.threshold:.3f}, "
        f"crop rule: cell = {rule.cell_fraction:g} of the crop's side)"
        + (f"; drawn into {plot_dir}" if plot_dir is not None else ""),
        err=True,
    )
    sys.stdout.flush()
    return 1 if failed else 0


def _write(files, detector, classifier, threshold, as_json: bool, plot_dir: Path | None) -> tuple[int, int]:
    """Each image's cells as text or JSON on stdout (and drawn into `plot_dir`): (failed, white cells)."""
    out = click.get_text_stream("stdout")
    failed = cells = 0
    used: set[str] = set()
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
        record = find_cells(path, image, detector, classifier, threshold)
        cells += sum(c["kind"] == "wbc" for c in record["cells"])
        out.write((json.dumps(record) if as_json else _text(record)) + "\n")
        if plot_dir is not None:
            cv2.imwrite(str(plot_dir / _plot_name(Path(path), used)), draw_cells(image, record["cells"]))
    return failed, cells
