"""`edge eval BUNDLE LABELLED_DIR`: accuracy, per-class metrics, uncertainty and throughput on a labelled folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edge.batch import Inference
from edge.bundle import Bundle, find_bundle
from edge.commands._device_options import progress, rbc_px_option, runtime_options, uncertainty_options
from edge.commands._options import class_map_option, plot_file_option
from edge.confusion_image import write_confusion_png
from edge.daemon.config import DEFAULT_DETECTOR
from edge.dataset import parse_class_map, printable, scan_labelled
from edge.detect.detector import Detector
from edge.evaluation import EvalRun, evaluate, evaluate_cells
from edge.metrics import format_report
from edge.predict import uncertainty_rule
from edge.site import decision_line
from edge.site_cells import from_frames


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument("labelled_dirs", nargs=-1, type=click.Path(path_type=str), metavar="LABELLED_DIR...")
@click.option(
    "--frames",
    "frames_dir",
    type=click.Path(file_okay=False, path_type=str),
    help="Whole fields instead of LABELLED_DIR: each has one labelled white cell (--labels CSV "
    "'frame,label'), found by the daemon's detector and cut as `edge run --mode field` cuts it.",
)
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=str), help="With --frames.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write every number (and the per-image errors) to this JSON file.",
)
@plot_file_option("Write the confusion matrix as a PNG picture.")
@uncertainty_options
@click.option(
    "--baseline-images",
    type=click.IntRange(0, None),
    default=300,
    show_default=True,
    help="Also time a plain sequential loop (decode, preprocess, invoke one image at a time, same "
    "runtime and threads) on this many of the images, to report the pipeline's speed-up. 0: skip.",
)
@class_map_option(
    "A class folder alias, e.g. seg_neutrophil=neutrophil or Neutrophil_band=neutrophil (repeatable)."
)
@click.option(
    "--blast-class",
    "blast_classes",
    multiple=True,
    default=("myeloblast",),
    show_default=True,
    help="Classes whose confident calls are a blast alarm, for the false-blast rate (repeatable).",
)
@rbc_px_option
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
    rbc_px,
    inference: Inference,
    frames_dir=None,
    labels_csv=None,
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
    model = Bundle.load(bundle)
    if frames_dir:
        return _eval_frames(
            model, frames_dir, labels_csv, class_map, threshold, margin, blast_classes, rbc_px, json_path
        )
    if not labelled_dirs:
        raise click.UsageError("give LABELLED_DIR..., or --frames DIR --labels CSV")
    images = scan_labelled(
        labelled_dirs,
        model.labels,
        parse_class_map(class_map),
        keep_unknown=True,
        dedupe=len(labelled_dirs) > 1,
    )
    for folder in images.unknown_folders:
        click.echo(
            f"note: folder {folder} is not a class of this bundle: its cells should be rejected", err=True
        )
    rule = uncertainty_rule(model, threshold, margin)
    run = evaluate(
        model,
        images,
        inference,
        rule,
        baseline_images,
        blast_classes,
        progress,
        " + ".join(labelled_dirs),
        rbc_px=rbc_px,
        say=lambda line: click.echo(line, err=True),
    )
    run.report["command"] = "edge eval " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None
    for r in run.errors:
        click.echo(f"error: {printable(r.path)}: {r.error}", err=True)
    click.echo("\n".join(format_eval(run)))
    if json_path:
        Path(json_path).write_text(json.dumps(run.report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    if plot_path and run.known:
        report = run.report
        title = f"{' + '.join(Path(d).name for d in labelled_dirs)}: accuracy {report['accuracy'] * 100:.1f}%, n={report['n']}"
        write_confusion_png(plot_path, report["confusion"], report["labels"], title)
        click.echo(f"wrote {plot_path}")
    return 1 if run.errors else 0


def _eval_frames(
    model, frames_dir, labels_csv, class_map, threshold, margin, blast_classes, rbc_px, json_path
):
    if not labels_csv:
        raise click.UsageError("--frames DIR needs --labels CSV")
    detector = Detector.open(Bundle.load(find_bundle(DEFAULT_DETECTOR)), "cpu")
    cells = from_frames(
        Path(frames_dir), Path(labels_csv), detector, model.labels, parse_class_map(class_map)
    )
    rule = uncertainty_rule(model, threshold, margin)
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    report = evaluate_cells(model, cells, rule, blast_classes, rbc_px, progress, say)
    report["command"] = "edge eval " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None
    lines = [format_report(report), _uncertain_line(report)]
    fb = report["false_blast"]
    lines += [_false_blast_line(fb), decision_line(**report["site"])]
    click.echo("\n".join(lines))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    return 0


def _uncertain_line(report: dict) -> str:
    return (
        f"uncertain {report['uncertain_fraction'] * 100:.1f}% of cells ({report['uncertain_n']}); "
        f"accuracy on the confident ones {report['confident_accuracy'] * 100:.2f}% (n={report['confident_n']}); "
        f"rejected as unknown {report['rejected_fraction'] * 100:.1f}% ({report['rejected_n']})"
    )


def _false_blast_line(fb: dict) -> str:
    line = (
        f"false blast: {fb['false_blast']} of {fb['normal_cells']} normal cells "
        f"({fb['false_blast_rate'] * 100:.2f}%) called {'/'.join(fb['blast_classes'])} without a flag"
    )
    if fb.get("false_blast_without_gate", fb["false_blast"]) != fb["false_blast"]:
        line += f" ({fb['false_blast_without_gate']}, {fb['false_blast_rate_without_gate'] * 100:.2f}%, without the gate's flag)"
    return line


def format_eval(run: EvalRun) -> list[str]:
    """What `edge eval` prints: the metrics table, then one line per kind of number."""
    report = run.report
    lines = []
    if run.known:
        lines += [format_report(report), _uncertain_line(report)]
    for folder, v in report.get("should_be_rejected", {}).get("folders", {}).items():
        labels_seen = ", ".join(f"{k} {n}" for k, n in v["confident_labels"].items()) or "none"
        lines.append(
            f"should be rejected: {folder} (n={v['n']}): {v['rejected_fraction'] * 100:.1f}% rejected, "
            f"{v['rejected_or_flagged_fraction'] * 100:.1f}% rejected or flagged; confident labels: {labels_seen}"
        )
    for source, part in report.get("per_source", {}).items():
        recalls = ", ".join(f"{k} {v * 100:.1f}%" for k, v in part["recall"].items())
        accuracy = "-" if part["accuracy"] is None else f"{part['accuracy'] * 100:.2f}%"
        lines.append(f"source {source}: n={part['n']} accuracy {accuracy}; recall {recalls}")
    lines += [_false_blast_line(report["false_blast"]), decision_line(**report["site"])]
    lines.append(_throughput_line(run))
    if run.errors:
        lines.append(
            f"{len(run.errors)} of {report['n_files']} files could not be read (listed above; not counted in the metrics)"
        )
    return lines


def _throughput_line(run: EvalRun) -> str:
    report, info, chosen = run.report, run.report["runtime"], run.plan
    line = (
        f"throughput {run.pipeline.images_per_second:.1f} images/s end to end "
        f"({info['runtime']} {info['runtime_version']}, {chosen.replicas} interpreter(s) x {chosen.threads} thread(s))"
    )
    if run.baseline is not None:
        line += (
            f"; plain sequential loop {run.baseline.images_per_second:.1f} images/s on {report['baseline_images']} "
            f"of them: {report['speedup']:.2f}x"
        )
    if "sequential_all_cores_images_per_second" in report:
        line += (
            f"; sequential with all cores {report['sequential_all_cores_images_per_second']:.1f} images/s: "
            f"{report['speedup_vs_all_cores']:.2f}x"
        )
    return line
