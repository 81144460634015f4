"""`edge eval BUNDLE LABELLED_DIR`: accuracy, per-class metrics, uncertainty and throughput on a labelled folder."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import click
import numpy as np

from edge.batch import ImageResult, Throughput, classify_paths, classify_sequential, timed
from edge.bundle import Bundle
from edge.commands._device_options import open_classifiers, pipeline_for, progress, runtime_options
from edge.dataset import load_one, scan_labelled
from edge.errors import EdgeError
from edge.metrics import classification_report, format_report
from edge.predict import Classifier, uncertainty_rule
from edge.runtime.tflite import usable_cores


def _warm_up(classifiers: list[Classifier], batch_size: int, first: Path | None = None) -> None:
    """The first invoke packs weights (XNNPACK) and the first decode loads codecs, 100s of ms each:
    keep them out of every timing."""
    if first is not None:
        load_one(first, classifiers[0].spec)
    shape = (batch_size, *classifiers[0].backend.input_shape)
    for c in classifiers:
        c.classify_tensors(np.zeros(shape, np.uint8))
        c.classify_tensors(np.zeros((1, *shape[1:]), np.uint8))


def _baseline_sample(paths: list[Path], count: int) -> list[Path]:
    """`count` images spread over the whole (class-sorted) list, so every class is in the sample."""
    if count <= 0 or count >= len(paths):
        return list(paths)
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, count).round()]


def _confident_stats(results: list[ImageResult], targets: list[int], labels: list[str]) -> dict:
    good = [(r, t) for r, t in zip(results, targets, strict=True) if r.ok]
    confident = [(r, t) for r, t in good if not r.prediction.uncertain]
    correct = sum(labels.index(r.prediction.label) == t for r, t in confident)
    return {
        "uncertain_n": len(good) - len(confident),
        "uncertain_fraction": (len(good) - len(confident)) / len(good) if good else 0.0,
        "confident_n": len(confident),
        "confident_accuracy": correct / len(confident) if confident else 0.0,
    }


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument("labelled_dir", type=click.Path(path_type=str))
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write every number (and the per-image errors) to this JSON file.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the confusion matrix as a PNG picture.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Uncertain below this top probability. Default: the bundle's calibrated value.",
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 1),
    default=None,
    help="Uncertain below this top-1 minus top-2 margin. Default: the bundle's.",
)
@click.option(
    "--baseline-images",
    type=click.IntRange(0, None),
    default=300,
    show_default=True,
    help="Also time a plain sequential loop (decode, preprocess, invoke one image at a time, same "
    "runtime and threads) on this many of the images, to report the pipeline's speed-up. 0: skip.",
)
@runtime_options
def eval_(
    bundle,
    labelled_dir,
    json_path,
    plot_path,
    threshold,
    margin,
    baseline_images,
    backend,
    device,
    runtime,
    threads,
    batch_size,
    workers,
    onnx_options,
):
    """Evaluate the model BUNDLE on LABELLED_DIR, a folder with one sub-folder of images per class.

    \b
    Folder names match the bundle's labels regardless of case, underscores and hyphens
    (Seg-Neutrophil = seg_neutrophil); a folder matching no label is an error. Reports accuracy,
    macro and per-class precision / recall / F1 / specificity, the confusion matrix, how many cells
    were flagged uncertain and the accuracy on the others, and end-to-end images/s.

    \b
    Example:
      edge eval models/mobilenetv2-int8 data/blood-5class/val --json eval.json --plot confusion.png
    """
    model = Bundle.load(bundle)
    labels = model.labels
    images = scan_labelled(labelled_dir, labels)
    paths, targets = images.files, images.targets.tolist()
    folders = sorted({i.folder for i in images.items})
    rule = uncertainty_rule(model, threshold, margin)
    threads, replicas, options = pipeline_for(backend, threads, batch_size, workers, len(paths))
    classifiers = open_classifiers(
        model,
        backend,
        replicas,
        uncertainty=rule,
        top_k=min(3, len(labels)),
        runtime=runtime,
        threads=threads,
        device=device,
        **onnx_options,
    )
    _warm_up(classifiers, batch_size, paths[0])

    with progress(classify_paths(classifiers, paths, options), len(paths), "evaluating") as stream:
        results, pipeline = timed(stream)
    errors = [r for r in results if not r.ok]
    for r in errors:
        click.echo(f"error: {r.path}: {r.error}", err=True)
    good = [(r, t) for r, t in zip(results, targets, strict=True) if r.ok]
    if not good:
        raise EdgeError(f"{labelled_dir}: none of the {len(paths)} images could be read")
    y_true = [t for _, t in good]
    y_pred = [labels.index(r.prediction.label) for r, _ in good]
    report = classification_report(y_true, y_pred, labels)
    report.update(_confident_stats(results, targets, labels))
    report["images_per_second"] = round(pipeline.images_per_second, 2)

    baseline = None
    if baseline_images:
        sample = _baseline_sample(paths, baseline_images)
        with progress(
            classify_sequential(classifiers[0], sample), len(sample), "sequential baseline"
        ) as stream:
            _, baseline = timed(stream)
        report["sequential_images_per_second"] = round(baseline.images_per_second, 2)
        report["speedup"] = round(pipeline.images_per_second / baseline.images_per_second, 3)
        report["baseline_images"] = len(sample)
        if threads < usable_cores() and backend == "cpu":
            # Same-threads is the fair pairing; the all-cores loop is shown too so nothing flatters the pipeline.
            full = open_classifiers(model, backend, 1, uncertainty=rule, runtime=runtime, device=device)[0]
            _warm_up([full], 1)
            _, all_cores = timed(classify_sequential(full, sample))
            report["sequential_all_cores_images_per_second"] = round(all_cores.images_per_second, 2)
            report["speedup_vs_all_cores"] = round(
                pipeline.images_per_second / all_cores.images_per_second, 3
            )

    info = classifiers[0].backend.describe()
    report.update(
        n_files=len(paths),
        n_failed=len(errors),
        errors=[{"path": str(r.path), "error": r.error} for r in errors],
        folders=folders,
        dataset=str(Path(labelled_dir)),
        bundle={"path": str(model.path), "sha256": model.sha256, "model": model.manifest.model},
        uncertainty={
            "min_confidence": rule.min_confidence,
            "min_margin": rule.min_margin,
            "source": rule.source,
        },
        runtime=info,
        pipeline={
            "replicas": replicas,
            "threads_per_interpreter": threads,
            "batch_size": options.batch_size,
            "loader_workers": options.workers if replicas == 1 else 0,
            "seconds": round(pipeline.seconds, 3),
        },
        machine={
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        command="edge eval " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None,
    )

    click.echo(format_report(report))
    click.echo(
        f"uncertain {report['uncertain_fraction'] * 100:.1f}% of cells ({report['uncertain_n']}); "
        f"accuracy on the confident ones {report['confident_accuracy'] * 100:.2f}% (n={report['confident_n']})"
    )
    click.echo(_throughput_line(pipeline, baseline, report, info, replicas, threads))
    if errors:
        click.echo(
            f"{len(errors)} of {len(paths)} files could not be read (listed above; not counted in the metrics)"
        )
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    if plot_path:
        from edge.confusion_image import write_confusion_png

        title = f"{Path(labelled_dir).name}: accuracy {report['accuracy'] * 100:.1f}%, n={report['n']}"
        write_confusion_png(plot_path, report["confusion"], labels, title)
        click.echo(f"wrote {plot_path}")
    return 1 if errors else 0


def _throughput_line(
    pipeline: Throughput, baseline: Throughput | None, report: dict, info: dict, replicas: int, threads: int
) -> str:
    line = (
        f"throughput {pipeline.images_per_second:.1f} images/s end to end "
        f"({info['runtime']} {info['runtime_version']}, {replicas} interpreter(s) x {threads} thread(s))"
    )
    if baseline is not None:
        line += (
            f"; plain sequential loop {baseline.images_per_second:.1f} images/s on {report['baseline_images']} "
            f"of them: {report['speedup']:.2f}x"
        )
    if "sequential_all_cores_images_per_second" in report:
        line += (
            f"; sequential with all cores {report['sequential_all_cores_images_per_second']:.1f} images/s: "
            f"{report['speedup_vs_all_cores']:.2f}x"
        )
    return line
