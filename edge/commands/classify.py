"""`edge classify BUNDLE PATH...`: label image files and folders, one line (or record) per image."""

from __future__ import annotations

import csv
import json
import sys
import time

import click

from edge.batch import ImageResult, Inference, classify_paths, open_classifiers, plan
from edge.bundle import Bundle
from edge.commands._device_options import progress, rbc_px_option, runtime_options, uncertainty_options
from edge.commands._options import top_k_option
from edge.dataset import IMAGE_SUFFIXES, expand_paths, printable
from edge.errors import DataError
from edge.predict import uncertainty_rule
from edge.preprocess import View
from edge.site import GateWatch, decision_line, folder_scale, gated

CSV_FIELDS = [
    "path",
    "label",
    "confidence",
    "margin",
    "uncertain",
    "top_k",
    "decode_ms",
    "preprocess_ms",
    "invoke_ms",
    "error",
]


def _record(result: ImageResult) -> dict:
    if not result.ok:
        return {"path": printable(result.path), "error": result.error}
    return {"path": printable(result.path), **result.prediction.to_dict()}


def _csv_row(result: ImageResult) -> dict:
    if not result.ok:
        return {"path": printable(result.path), "error": result.error}
    p = result.prediction
    t = p.timings_ms
    return {
        "path": printable(result.path),
        "label": p.label,
        "confidence": f"{p.confidence:.6f}",
        "margin": f"{p.margin:.6f}",
        "uncertain": int(p.uncertain),
        "top_k": ";".join(f"{name}:{prob:.6f}" for name, prob in p.top_k),
        "decode_ms": f"{t.get('decode', 0):.3f}",
        "preprocess_ms": f"{t.get('preprocess', 0):.3f}",
        "invoke_ms": f"{t.get('invoke', 0):.3f}",
        "error": "",
    }


def _text_line(result: ImageResult) -> str:
    p = result.prediction
    t = p.timings_ms
    flag = "UNCERTAIN" if p.uncertain else "ok"
    others = ", ".join(f"{name} {prob:.3f}" for name, prob in p.top_k[1:])
    ms = t.get("decode", 0) + t.get("preprocess", 0) + t.get("invoke", 0)
    return f"{printable(result.path)}\t{p.label}\t{p.confidence:.3f}\t{flag}\t{others}\t{ms:.1f} ms"


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(path_type=str))
@click.option(
    "--json", "fmt", flag_value="json", help="One JSON object per line (JSON Lines), errors included."
)
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row, errors included.")
@top_k_option
@uncertainty_options
@rbc_px_option
@runtime_options
def classify(
    bundle,
    paths,
    fmt,
    top_k,
    threshold,
    margin,
    rbc_px,
    inference: Inference,
):
    """Classify the images in PATH... (files, or folders searched recursively) with the model BUNDLE.

    \b
    Prints one line per image: path, label, confidence, ok/UNCERTAIN, the runner-up labels and the
    time spent on it. A file that cannot be read gets an error line on stderr naming it; the other
    images are still classified, and the exit code is then 1.

    \b
    Examples:
      edge classify models/mobilenetv2-int8 cell.jpg
      edge classify models/mobilenetv2-int8 slides/ --csv > results.csv
      edge classify models/mobilenetv2-int8 slides/ --backend edgetpu --device usb:0 --json
    """
    model = Bundle.load(bundle)
    files = expand_paths(paths)
    if not files:
        raise DataError(
            f"no images found in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    rule = uncertainty_rule(model, threshold, margin)
    chosen = plan(inference, len(files))
    classifiers = open_classifiers(model, inference, chosen, uncertainty=rule, top_k=top_k)
    scale, _, line = folder_scale(model, files, rbc_px)
    if line:
        click.echo(line, err=True)
    watch = GateWatch(model.manifest.gate)  # the images are one microscope's, as a session's
    t0 = time.perf_counter()
    stream = gated(
        classify_paths(classifiers, files, chosen.options, [View(rbc_px=scale)] * len(files)), watch
    )
    with progress(stream, len(files), "classifying", not sys.stdout.isatty()) as results:
        failed, uncertain = _write(results, fmt, click.get_text_stream("stdout"))
    seconds = time.perf_counter() - t0
    info = classifiers[0].backend.describe()
    ok = len(files) - failed
    if not ok:  # nothing was classified: a speed would mean nothing
        click.echo(f"0 classified, {failed} failed", err=True)
        return 1
    click.echo(
        f"{ok} classified, {uncertain} uncertain, {failed} failed in {seconds:.1f} s "
        f"({len(files) / seconds:.1f} images/s; {info['backend']}, {info['runtime']} {info['runtime_version']}, "
        f"{chosen.replicas} x {chosen.threads} thread(s); uncertain below {rule.min_confidence:.2f} confidence "
        f"or {rule.min_margin:.2f} margin, from {rule.source.split(':')[0]})",
        err=True,
    )
    if watch.decision != "unavailable":
        site = model.manifest.site
        click.echo(
            decision_line(
                watch.decision, site is not None, site and site.name, watch.median, watch.cells_checked
            ),
            err=True,
        )
    sys.stdout.flush()
    return 1 if failed else 0


def _write(results, fmt: str | None, out) -> tuple[int, int]:
    """Each result as the format asks (errors also on stderr): (failed, uncertain) counts."""
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
    failed = uncertain = 0
    for result in results:
        if not result.ok:
            failed += 1
            click.echo(f"error: {printable(result.path)}: {result.error}", err=True)
        else:
            uncertain += result.prediction.uncertain
        if fmt == "json":
            out.write(json.dumps(_record(result)) + "\n")
        elif fmt == "csv":
            writer.writerow(_csv_row(result))
        elif result.ok:
            out.write(_text_line(result) + "\n")
    return failed, uncertain
