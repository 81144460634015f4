"""`edge eval BUNDLE LABELLED_DIR`: accuracy, per-class metrics, uncertainty and throughput on a labelled folder."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import click
import numpy as np

from edge.batch import Throughput, classify_paths, classify_sequential, timed
from edge.bundle import Bundle
from edge.commands._device_options import (
    open_classifiers,
    pipeline_for,
    progress,
    runtime_options,
    uncertainty_options,
)
from edge.dataset import load_one, printable, scan_labelled
from edge.errors import EdgeError
from edge.metrics import format_report
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


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument(
    "labelled_dirs", nargs=-1, required=True, type=click.Path(path_type=str), metavar="LABELLED_DIR..."
)
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
@uncertainty_options
@click.option(
    "--baseline-images",
    type=click.IntRange(0, None),
    default=300,
    show_default=True,
    help="Also time a plain sequential loop (decode, preprocess, invoke one image at a time, same "
    "runtime and threads) on this many of the images, to report the pipeline's speed-up. 0: skip.",
)
@click.option(
    "--map",
    "class_map",
    multiple=True,
    metavar="FOLDER=LABEL",
    help="A class folder alias, e.g. seg_neutrophil=neutrophil or Neutrophil_band=neutrophil (repeatable).",
)
@click.option(
    "--blast-class",
    "blast_classes",
    multiple=True,
    default=("myeloblast",),
    show_default=True,
    help="Classes whose confident calls are a blast alarm, for the false-blast rate (repeatable).",
)
@runtime_options
def eval_(
    bundle,
    labelled_dirs,
    json_path,
    plot_path,
    threshold,
    margin,
    baseline_images,
    class_map,
    blast_classes,
    backend,
    device,
    runtime,
    threads,
    batch_size,
    workers,
    onnx_options,
):
    """Evaluate the model BUNDLE on LABELLED_DIR, a folder with one sub-folder of images per class.
    Several folders (sources) are scored together, each file once, and also one by one ("per source").

    \b
    Folder names match the bundle's labels regardless of case, underscores and hyphens
    (Seg-Neutrophil = seg_neutrophil), after --map aliases. Reports accuracy (a rejected, "unknown"
    cell counts as wrong), macro and per-class precision / recall / F1 / specificity, the confusion
    matrix, how many cells were flagged uncertain or rejected, the accuracy on the others, and
    end-to-end images/s. A folder of a class the bundle does not know is scored as "should be
    rejected": the share of its cells rejected or flagged. The false-blast rate counts normal cells
    called a --blast-class without a flag.

    \b
    Examples:
      edge eval models/mobilenetv2-int8 data/blood-5class/val --json eval.json --plot confusion.png
      edge eval models/differential-int8 data/tecom-wbc --json tecom.json
      edge eval models/differential-int8 data/pbc-8class/val data/blood-5class/val \\
                --map seg_neutrophil=neutrophil
    """
    from edge.dataset import parse_class_map
    from edge.site_scores import false_blast_rate, known_class_report, should_reject_report

    model = Bundle.load(bundle)
    labels = model.labels
    images = scan_labelled(
        labelled_dirs, labels, parse_class_map(class_map), keep_unknown=True, dedupe=len(labelled_dirs) > 1
    )
    labelled_dir = " + ".join(labelled_dirs)
    for folder in images.unknown_folders:
        click.echo(
            f"note: folder {folder} is not a class of this bundle: its cells should be rejected", err=True
        )
    paths = images.files
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
        click.echo(f"error: {printable(r.path)}: {r.error}", err=True)
    good = [(r, item) for r, item in zip(results, images.items, strict=True) if r.ok]
    if not good:
        raise EdgeError(f"{labelled_dir}: none of the {len(paths)} images could be read")
    known = [(r.prediction, item.label) for r, item in good if item.label >= 0]
    if known:
        report = known_class_report([p for p, _ in known], [t for _, t in known], labels)
    else:
        report = {"n": 0, "labels": labels, "accuracy": None}
    unknown_folders: dict[str, list] = {}
    for r, item in good:
        if item.label < 0:
            unknown_folders.setdefault(item.folder, []).append(r.prediction)
    if unknown_folders:
        report["should_be_rejected"] = should_reject_report(unknown_folders)
    true_names = [labels[item.label] if item.label >= 0 else item.folder for _, item in good]
    report["false_blast"] = false_blast_rate([r.prediction for r, _ in good], true_names, list(blast_classes))
    if len(images.roots) > 1:
        report["per_source"] = _per_source(good, labels, list(blast_classes))
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
        errors=[{"path": printable(r.path), "error": r.error} for r in errors],
        folders=folders,
        dataset=labelled_dir,
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

    if known:
        click.echo(format_report(report))
        click.echo(
            f"uncertain {report['uncertain_fraction'] * 100:.1f}% of cells ({report['uncertain_n']}); "
            f"accuracy on the confident ones {report['confident_accuracy'] * 100:.2f}% (n={report['confident_n']}); "
            f"rejected as unknown {report['rejected_fraction'] * 100:.1f}% ({report['rejected_n']})"
        )
    for folder, v in report.get("should_be_rejected", {}).get("folders", {}).items():
        labels_seen = ", ".join(f"{k} {n}" for k, n in v["confident_labels"].items()) or "none"
        click.echo(
            f"should be rejected: {folder} (n={v['n']}): {v['rejected_fraction'] * 100:.1f}% rejected, "
            f"{v['rejected_or_flagged_fraction'] * 100:.1f}% rejected or flagged; confident labels: {labels_seen}"
        )
    for source, part in report.get("per_source", {}).items():
        recalls = ", ".join(f"{k} {v * 100:.1f}%" for k, v in part["recall"].items())
        accuracy = "-" if part["accuracy"] is None else f"{part['accuracy'] * 100:.2f}%"
        click.echo(f"source {source}: n={part['n']} accuracy {accuracy}; recall {recalls}")
    fb = report["false_blast"]
    click.echo(
        f"false blast: {fb['false_blast']} of {fb['normal_cells']} normal cells "
        f"({fb['false_blast_rate'] * 100:.2f}%) called {'/'.join(fb['blast_classes'])} without a flag"
    )
    click.echo(_throughput_line(pipeline, baseline, report, info, replicas, threads))
    if errors:
        click.echo(
            f"{len(errors)} of {len(paths)} files could not be read (listed above; not counted in the metrics)"
        )
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    if plot_path and known:
        from edge.confusion_image import write_confusion_png

        title = f"{' + '.join(Path(d).name for d in labelled_dirs)}: accuracy {report['accuracy'] * 100:.1f}%, n={report['n']}"
        write_confusion_png(plot_path, report["confusion"], report["labels"], title)
        click.echo(f"wrote {plot_path}")
    return 1 if errors else 0


def _per_source(good, labels: list[str], blast_classes: list[str]) -> dict:
    """Accuracy, per-class recall and false-blast rate of each source folder on its own: a model that
    learned a lab shows it here (e.g. neutrophils right in one lab and wrong in the other)."""
    from edge.dataset import split_name
    from edge.site_scores import false_blast_rate

    out = {}
    for source in dict.fromkeys(item.source for _, item in good):
        part = [(r.prediction, item) for r, item in good if item.source == source]
        known = [(p, item.label) for p, item in part if item.label >= 0]
        recall = {}
        for i, name in enumerate(labels):
            members = [p for p, t in known if t == i]
            if members:
                recall[name] = round(sum(p.label == name for p in members) / len(members), 4)
        names = [labels[item.label] if item.label >= 0 else item.folder for _, item in part]
        out[split_name(source)] = {
            "n": len(part),
            "accuracy": round(sum(p.label == labels[t] for p, t in known) / len(known), 4) if known else None,
            "recall": recall,
            "false_blast": false_blast_rate([p for p, _ in part], names, blast_classes),
        }
    return out


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
