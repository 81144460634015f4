"""`edge eval`'s work: labelled folders classified by the overlapped pipeline (edge.batch), scored
(edge.site_scores), and timed against the plain one-image-at-a-time loop. It returns the numbers;
edge/commands/eval.py prints them."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.batch import (
    ImageResult,
    Inference,
    Plan,
    Throughput,
    classify_paths,
    classify_sequential,
    open_classifiers,
    plan,
    timed,
)
from edge.bundle import Bundle, Uncertainty
from edge.dataset import ImageSet, load_one, printable, split_name
from edge.errors import EdgeError
from edge.metrics import label_indices, recall_by_class
from edge.predict import Classifier
from edge.preprocess import View
from edge.runtime.tflite import usable_cores
from edge.site import CHECKING, UNAVAILABLE, GateWatch, folder_scale, gated
from edge.site_scores import false_blast_rate, known_class_report, should_reject_report


def no_progress(items, length: int, label: str):
    return contextlib.nullcontext(items)


@dataclass
class EvalRun:
    report: dict  # every number, as `edge eval --json` writes it
    errors: list[ImageResult]  # the files that could not be read
    pipeline: Throughput
    baseline: Throughput | None
    plan: Plan

    @property
    def known(self) -> bool:
        """Some cell is of a class the bundle knows (else there is no accuracy to report)."""
        return bool(self.report["n"])


def _warm_up(classifiers: list[Classifier], batch_size: int, first: Path | None = None) -> None:
    """The first invoke packs weights (XNNPACK) and the first decode loads codecs, 100s of ms each:
    keep them out of every timing."""
    if first is not None:
        load_one(first, classifiers[0].spec)
    shape = (batch_size, *classifiers[0].backend.input_shape)
    for c in classifiers:
        c.classify_tensors(np.zeros(shape, np.uint8))
        c.classify_tensors(np.zeros((1, *shape[1:]), np.uint8))


def baseline_sample(paths: list[Path], count: int) -> list[Path]:
    """`count` images spread over the whole (class-sorted) list, so every class is in the sample."""
    if count <= 0 or count >= len(paths):
        return list(paths)
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, count).round()]


def score(good: list[tuple], labels: list[str], blast_classes: list[str], per_source: bool) -> dict:
    """The numbers of the readable images, (result, LabelledImage) pairs: known classes, classes that
    should be rejected, the false-blast rate, and each source on its own."""
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
    report["false_blast"] = false_blast_rate([r.prediction for r, _ in good], true_names, blast_classes)
    if per_source:
        report["per_source"] = _per_source(good, labels, blast_classes)
    return report


def _per_source(good, labels: list[str], blast_classes: list[str]) -> dict:
    """Accuracy, per-class recall and false-blast rate of each source folder on its own: a model that
    learned a lab shows it here (e.g. neutrophils right in one lab and wrong in the other)."""
    out = {}
    for source in dict.fromkeys(item.source for _, item in good):
        part = [(r.prediction, item) for r, item in good if item.source == source]
        known = [(p, item.label) for p, item in part if item.label >= 0]
        predicted = label_indices([p.label for p, _ in known], labels)
        recall = recall_by_class([t for _, t in known], predicted, labels)
        names = [labels[item.label] if item.label >= 0 else item.folder for _, item in part]
        out[split_name(source)] = {
            "n": len(part),
            "accuracy": round(sum(p.label == labels[t] for p, t in known) / len(known), 4) if known else None,
            "recall": {name: round(share, 4) for name, (_, share) in recall.items()},
            "false_blast": false_blast_rate([p for p, _ in part], names, blast_classes),
        }
    return out


def _time_baseline(
    classifier, model, inference, chosen: Plan, sample, pipeline, report, progress, views=None
) -> Throughput:
    """The plain loop on `sample` with the pipeline's threads; also with all cores where the pipeline
    used fewer per interpreter (the fair pairing is the first; the second keeps it from flattering)."""
    with progress(
        classify_sequential(classifier, sample, views), len(sample), "sequential baseline"
    ) as stream:
        _, baseline = timed(stream)
    report["sequential_images_per_second"] = round(baseline.images_per_second, 2)
    report["speedup"] = round(pipeline.images_per_second / baseline.images_per_second, 3)
    report["baseline_images"] = len(sample)
    if chosen.threads < usable_cores() and inference.backend == "cpu":
        full = Classifier.open(
            model,
            "cpu",
            uncertainty=classifier.uncertainty,
            runtime=inference.runtime,
            device=inference.device,
        )
        _warm_up([full], 1)
        _, all_cores = timed(classify_sequential(full, sample, views))
        report["sequential_all_cores_images_per_second"] = round(all_cores.images_per_second, 2)
        report["speedup_vs_all_cores"] = round(pipeline.images_per_second / all_cores.images_per_second, 3)
    return baseline


def _context(model: Bundle, images: ImageSet, name: str, run: EvalRun, rule: Uncertainty, info: dict) -> dict:
    """What the numbers were measured on: files, bundle, rule, runtime, pipeline and machine."""
    chosen = run.plan
    return dict(
        n_files=len(images),
        n_failed=len(run.errors),
        errors=[{"path": printable(r.path), "error": r.error} for r in run.errors],
        folders=sorted({i.folder for i in images.items}),
        dataset=name,
        bundle={"path": str(model.path), "sha256": model.sha256, "model": model.manifest.model},
        uncertainty={
            "min_confidence": rule.min_confidence,
            "min_margin": rule.min_margin,
            "source": rule.source,
        },
        runtime=info,
        pipeline={
            "replicas": chosen.replicas,
            "threads_per_interpreter": chosen.threads,
            "batch_size": chosen.options.batch_size,
            "loader_workers": chosen.options.workers if chosen.replicas == 1 else 0,
            "seconds": round(run.pipeline.seconds, 3),
        },
        machine={
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    )


def folder_views(model: Bundle, images: ImageSet, rbc_px: float | None, say=None) -> list[View]:
    """Each file's View at its source folder's scale (edge.site.folder_scale); `say` gets the lines."""
    scales = {}
    for root in images.roots:
        files = [i.path for i in images.items if Path(i.source) == Path(root)]
        scale, _, line = folder_scale(model, files, rbc_px)
        if line and say is not None:
            say(f"{split_name(root)}: {line}")
        scales[str(root)] = scale
    return images.views({k: v for k, v in scales.items() if v})


def evaluate(
    model: Bundle,
    images: ImageSet,
    inference: Inference,
    rule: Uncertainty,
    baseline_images: int = 300,
    blast_classes: tuple[str, ...] = ("myeloblast",),
    progress=no_progress,
    name: str | None = None,
    rbc_px: float | None = None,
    say=None,
) -> EvalRun:
    """Classify every file of `images` (labelled folders, several sources at once), score the
    readable ones and time the pipeline; `progress(items, length, label)` wraps each long loop.
    `name`: what the report calls the data (default: the roots, joined by " + "). Each folder is cut at
    its scale and judged by the bundle's gate as `edge run` would (edge.site)."""
    name = name or " + ".join(map(str, images.roots))
    paths = images.files
    views = folder_views(model, images, rbc_px, say)
    chosen = plan(inference, len(paths))
    top_k = min(3, len(model.labels))
    classifiers = open_classifiers(model, inference, chosen, uncertainty=rule, top_k=top_k)
    _warm_up(classifiers, inference.batch_size, paths[0])
    watch = GateWatch(model.manifest.gate)
    stream = gated(classify_paths(classifiers, paths, chosen.options, views), watch)
    with progress(stream, len(paths), "evaluating") as stream:
        results, pipeline = timed(stream)
    good = [(r, item) for r, item in zip(results, images.items, strict=True) if r.ok]
    if not good:
        raise EdgeError(f"{name}: none of the {len(paths)} images could be read")
    report = score(good, model.labels, list(blast_classes), per_source=len(images.roots) > 1)
    report["images_per_second"] = round(pipeline.images_per_second, 2)
    report["site"] = {
        "calibrated": model.manifest.site is not None,
        "site": model.manifest.site.name if model.manifest.site else None,
        "decision": watch.decision,
        "matches_bundle": None if watch.decision in (CHECKING, UNAVAILABLE) else not watch.differs,
        "cells_checked": watch.cells_checked,
        "median_score": watch.median,
        "rbc_px": sorted({v.rbc_px for v in views if v.rbc_px}),
    }
    run = EvalRun(report, [r for r in results if not r.ok], pipeline, None, chosen)
    if baseline_images:
        sample = baseline_sample(paths, baseline_images)
        by_path = dict(zip(paths, views, strict=True))
        run.baseline = _time_baseline(
            classifiers[0],
            model,
            inference,
            chosen,
            sample,
            pipeline,
            report,
            progress,
            [by_path[p] for p in sample],
        )
    report.update(_context(model, images, name, run, rule, classifiers[0].backend.describe()))
    return run


def evaluate_cells(
    model: Bundle,
    cells,
    rule: Uncertainty,
    blast_classes: tuple[str, ...] = ("myeloblast",),
    rbc_px: float | None = None,
    progress=no_progress,
    say=None,
    batch: int = 8,
) -> dict:
    """Labelled cells of whole fields (edge.site_cells.from_frames: the detector found each cell) cut
    at the microscope's scale, classified in their order, judged by the gate as `edge run` would,
    and scored. No throughput: the detector's time is `edge bench --mode field`'s."""
    scale = rbc_px
    if scale is None and model.manifest.site is not None and model.manifest.site.scale is not None:
        scale, where = model.manifest.site.scale.rbc_px, f"site {model.manifest.site.name}"
    elif scale is None and model.preprocess_spec.field_rbc:
        found = cells.measured_scale()
        scale, where = (
            (found.rbc_px, f"measured on {found.cells} red cells") if found else (None, "unmeasured")
        )
    else:
        where = "given"
    if say is not None and model.preprocess_spec.field_rbc:
        say(
            f"{cells.split}: scale: red cells {scale:g} px across ({where})"
            if scale
            else f"{cells.split}: scale unknown"
        )
    classifier = Classifier.open(model, "cpu", uncertainty=rule, top_k=min(3, len(model.labels)))
    watch = GateWatch(model.manifest.gate)
    tensors = cells.inputs(model, scale)
    inputs = (tensors[i : i + batch] for i in range(0, len(cells), batch))

    def predictions():
        for chunk in inputs:
            yield from (_Cell(p) for p in classifier.classify_tensors(chunk))

    with progress(gated(predictions(), watch), len(cells), "evaluating") as stream:
        preds = [c.prediction for c in stream]
    report = known_class_report(preds, list(cells.y), model.labels)
    names = [model.labels[t] for t in cells.y]
    report["false_blast"] = false_blast_rate(preds, names, list(blast_classes))
    report["site"] = {
        "calibrated": model.manifest.site is not None,
        "site": model.manifest.site.name if model.manifest.site else None,
        "decision": watch.decision,
        "matches_bundle": None if watch.decision in (CHECKING, UNAVAILABLE) else not watch.differs,
        "cells_checked": watch.cells_checked,
        "median_score": watch.median,
        "rbc_px": [scale] if scale else [],
    }
    report["dataset"] = cells.split
    report["skipped"] = [f"{what}: {why}" for what, why in cells.skipped]
    return report


@dataclass
class _Cell:
    prediction: object
