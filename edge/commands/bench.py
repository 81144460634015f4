"""`edge bench`: latency per stage and throughput of the whole per-frame pipeline, with the context
that makes numbers comparable across devices. Definitions: edge/bench/__init__.py, docs/bench.md."""

from __future__ import annotations

from pathlib import Path

import click

from edge.bench import compare as compare_mod
from edge.bench import export, plot, sweep, table
from edge.commands._config_options import config_option
from edge.commands._device_options import onnx_options
from edge.commands.detect import default_detector
from edge.daemon.config import choose_mode
from edge.progress import progress
from edge.runtime import BACKENDS, MAX_THREADS


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,2,4, got {value!r}") from None
    if not items or min(items) < 1 or max(items) > MAX_THREADS:
        raise click.BadParameter(f"thread counts must be between 1 and {MAX_THREADS}")
    return items


def _str_list(ctx, param, value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _backend_list(ctx, param, value):
    items = _str_list(ctx, param, value)
    for name in items or []:
        if name not in BACKENDS:
            raise click.BadParameter(
                f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} (a list sweeps them)"
            )
    return items


def _progress(config, total):
    """A bar on an interactive stderr only (edge.progress): logs and --json pipelines stay clean."""
    return progress(total=total, desc=config.label(), unit="frame", leave=False, note=False)


@click.command()
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path), metavar="[BUNDLE]...")
@click.option(
    "--backend",
    "backends",
    callback=_backend_list,
    metavar="B[,B...]",
    help="cpu (TFLite + XNNPACK), edgetpu (Coral, model_edgetpu.tflite) or onnx (model.onnx through "
    "ONNX Runtime); a list sweeps them.  [default: cpu; --matrix: cpu,onnx where onnxruntime is installed]",
)
@click.option(
    "--device",
    default=None,
    metavar="DEV",
    help="Edge TPU to use: usb, usb:0, pci:0 ... (default: the first).",
)
@click.option(
    "--runtime",
    "runtimes",
    callback=_str_list,
    metavar="R[,R...]",
    help="auto, litert, tflite-runtime or tensorflow; a list sweeps them.  [default: auto]",
)
@click.option(
    "--threads",
    callback=_int_list,
    metavar="N[,N...]",
    help="Interpreter threads, e.g. 1,2,4 (a list sweeps them).  [default: as edge run: all cores in cell mode, half of them each in field mode]",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Timed frames (steady state); the pipelined pass runs as many again.",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Run each timed pass this long instead of --runs frames (the inline pass after its warm-up, "
    "then the pipelined one).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Untimed frames after the first inference.",
)
@click.option(
    "--source",
    default="sim",
    show_default=True,
    help="sim[:WxH] (synthetic fields, default 640x480), replay:DIR (image files, decoded per frame), "
    "camera[:N|/dev/videoN], opencv:TARGET or picamera2[:N] (the cameras of edge run).",
)
# The bench times what `edge run` does to each frame: these take edge run's declarations and defaults.
@config_option(
    "pipeline.region",
    "--region",
    declared_default=True,
    help="As edge run's cell mode: classify the centred square of this fraction of the frame's shorter "
    "side (1.0: the whole frame, e.g. for single-cell image folders).",
)
@config_option(
    "pipeline.region_px",
    "--region-px",
    declared_default=True,
    help="As edge run: the centred square of this many pixels instead (wins when > 0).",
)
@config_option(
    "pipeline.mode",
    "--mode",
    default="cell",  # the classifier's numbers; auto as edge run chooses by the source
    show_default=True,
    help="As edge run --mode: cell (the centred region) or field (detector, crops, tracking, the classifier "
    "batched over each frame's white cells; timed per frame and per cell); auto: field for a camera or sim.",
)
@config_option("pipeline.field.detector", "--detector", type=click.Path(path_type=Path))
@config_option(
    "pipeline.lab",
    "--lab",
    declared_default=True,
    help="How preprocessing does CLAHE's LAB round trip: auto (the lookup tables edge run builds, where "
    "RAM allows), tables, or cvtcolor (OpenCV's conversions). The same bytes; for A/B runs.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON."
)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write one CSV row per stage."
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the latency histogram of each run (end_to_end and invoke, p50/p95/p99 marked) as a PNG. "
    "Needs matplotlib (a host tool: the train extra).",
)
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Print ratios against an earlier --json file.",
)
@click.option(
    "--matrix",
    is_flag=True,
    help="Threads x runtimes x bundles in one table (sweeps 1..all cores and the installed runtimes "
    "unless --threads / --runtime say otherwise).",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Also show where each op runs (and per-op times if the runtime exposes them).",
)
@click.option(
    "--list-references", is_flag=True, help="Print the built-in published reference numbers and exit."
)
@onnx_options
def bench(
    bundles, json_path, csv_path, plot_path, compare_path, matrix, list_references, duration_s, **run_options
):
    """Measure latency per stage (capture, preprocess, invoke, postprocess, end_to_end) and pipelined
    throughput of BUNDLE on this device, with the context that makes the numbers comparable.

    \b
    BUNDLE defaults to what `edge run` runs (differential-int8, found as edge run finds it), --mode
    field to edge run's detector, and --source to synthetic frames, so no camera and no data are
    needed. Examples:
      edge bench --runs 200 --json out.json
      edge bench --duration 30 --plot latency.png
      edge bench models/differential-int8 --threads 1,2,4
      edge bench --matrix --runtime litert,tflite-runtime
      edge bench --matrix --backend cpu,onnx --threads 2
      edge bench --compare out.json
      edge bench --mode field --source replay:demo/bccd --runs 200
    """
    if list_references:
        click.echo(table.format_references())
        return
    old_runs = compare_mod.load_runs(compare_path) if compare_path else None  # fail before measuring
    if plot_path:
        plot.require()  # one line, before anything is measured
    for option, path in (("--json", json_path), ("--csv", csv_path), ("--plot", plot_path)):
        if path is not None and not path.resolve().parent.is_dir():
            raise click.BadParameter(f"folder {path.parent} does not exist", param_hint=option)
    scheme = run_options["source"].partition(":")[0]
    # bench's `camera` is edge run's opencv
    run_options["mode"] = choose_mode(run_options["mode"], "opencv" if scheme == "camera" else scheme)
    if run_options["mode"] == "field" and run_options["detector"] is None:
        run_options["detector"] = default_detector()
    run_options["duration_s"] = duration_s or 0.0
    plan = sweep.configs(bundles, matrix=matrix, **run_options)  # the other options are BenchConfig's
    as_matrix = matrix or len(plan) > 1
    results = sweep.run_all(plan, as_matrix, _progress)
    measured = [r for r in results if "stages" in r]
    click.echo(table.format_matrix(results) if as_matrix else table.format_result(results[0]))
    if as_matrix:  # every run's warnings, once each (more threads than cores is one run's)
        for w in dict.fromkeys(w for r in measured for w in r["context"].get("warnings") or []):
            click.echo(f"warning  {w}")
    if old_runs is not None:
        click.echo(_compared(measured, old_runs, compare_path))
    if json_path:
        export.write_json(json_path, export.document(results, as_matrix))
        click.echo(f"wrote {json_path}")
    if csv_path:
        export.write_csv(csv_path, results)
        click.echo(f"wrote {csv_path}")
    if plot_path:
        plot.write_histogram(plot_path, measured)
        click.echo(f"wrote {plot_path}")


def _compared(measured: list[dict], old_runs: list[dict], compare_path: Path) -> str:
    """Ratios against the runs of an earlier --json file; each run's comparison is kept in its result."""
    pairs = compare_mod.pair_runs(measured, old_runs)
    if not pairs:
        return f"compare: no run in {compare_path} has the same bundle, backend, runtime and threads"
    blocks = []
    for new, old in pairs:
        cmp = compare_mod.compare(new, old)
        new["comparison"] = {"against": str(compare_path), **cmp}
        # each side named by what it recorded: the old file's bundle is not this run's
        title = (
            f"compared with {compare_path}\n"
            f"  old: {compare_mod.describe_run(old)}\n  new: {compare_mod.describe_run(new)} (this run)"
        )
        blocks.append("\n" + compare_mod.format_comparison(cmp, title))
    return "\n".join(blocks)
