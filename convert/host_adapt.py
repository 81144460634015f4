"""`edge adapt BUNDLE SITE --host --run RUN --out NEW`: a site calibration on the training host.

The same site cells, split and scale as the device path (edge/adapt.py), then more than a last layer:

    run         RUN/model.keras and config.json, checked to be what BUNDLE was quantized from
    split       the device's: the held-back cells are never fitted, and score before and after
    scale       the device's choice (red cells, then cross-validated accuracy of a last-layer fit)
    fine-tune   the layers above the run's split layer, on the site's cells and replayed training
                cells (convert/site_finetune.py)
    quantize    the fine-tuned model through `edge quantize`'s own steps, as BUNDLE's manifest records
                them (calibration images, --adapt-head, rejection, gate, --format onnx), the site's fit
                cells joining the training cells in each
    site        the device's last steps: the site's class means join the rejection centres, the gate
                set on the site's cells, the site section (method "host"), the held-back numbers
    Edge TPU    `edge compile`'s steps where edgetpu_compiler is installed
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import shlex
import tempfile
from pathlib import Path

import click

from convert.commands.quantize import quantize as quantize_command
from convert.edgetpu import preflight
from convert.edgetpu_compiler import compile_bundle, find_compiler
from convert.quantize import QuantizeRequest, quantize
from convert.run_source import ModelSource, load_source
from convert.site_finetune import FitOptions, fine_tune
from edge.adapt import AdaptResult, SiteRequest, adapt_rejection, embed, seal, site_before, site_record
from edge.bundle import CPU_MODEL, EDGETPU_MODEL, ONNX_MODEL, Bundle
from edge.dataset import LabelledImages
from edge.errors import DataError
from edge.predict import Classifier
from edge.site_calibration import site_section

log = logging.getLogger(__name__)


def check_run(bundle: Bundle, src: ModelSource, run: Path) -> None:
    """RUN must be the run BUNDLE was quantized from: the same model file, labels and preprocessing."""
    recorded = bundle.manifest.model.get("source_sha256")
    if recorded and recorded != src.info["source_sha256"]:
        raise DataError(
            f"{run}: its model.keras (sha256 {src.info['source_sha256'][:12]}) is not the one {bundle.path} "
            f"was quantized from ({recorded[:12]}); give the run that made the bundle"
        )
    if list(src.labels or []) != list(bundle.labels):
        raise DataError(f"{run}: labels {src.labels} differ from the bundle's {bundle.labels}")
    if src.spec.to_dict() != bundle.preprocess_spec.to_dict():
        raise DataError(f"{run}: its preprocessing differs from the bundle's (config.json vs manifest.json)")


def requantize_request(bundle: Bundle, run: Path, out_dir: Path, cache, command: str) -> QuantizeRequest:
    """`edge quantize` as BUNDLE's manifest records it (calibration.command), for RUN into out_dir."""
    args = shlex.split(bundle.manifest.calibration.get("command") or "")
    if args[:2] != ["edge", "quantize"] or len(args) < 3:
        raise DataError(f"{bundle.path}: its manifest records no `edge quantize` command to repeat")
    try:
        ctx = quantize_command.make_context("quantize", [str(run), *args[3:]])
    except click.ClickException as exc:
        raise DataError(
            f"{bundle.path}: its quantize command cannot be repeated here: {exc.format_message()}"
        ) from None
    options = {k: v for k, v in ctx.params.items() if k != "verbose"}
    req = QuantizeRequest(**options)
    req.out_dir, req.cache, req.command = Path(out_dir), cache, command
    req.format = "onnx" if ONNX_MODEL in bundle.manifest.files else "tflite"
    return req


def _tuned_source(src: ModelSource, model, run: Path, folder: Path) -> ModelSource:
    """The fine-tuned model as a source for quantization, its file's sha256 recorded."""
    path = folder / "model.keras"
    model.save(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {
        **src.info,
        "source": f"{run / 'model.keras'}, fine-tuned by edge adapt --host",
        "source_sha256": sha,
    }
    return dataclasses.replace(src, model=model, info=info)


def _site_images(bundle: Bundle, fit_cells, rbc_px) -> LabelledImages:
    return LabelledImages(
        fit_cells.inputs(bundle, rbc_px),
        fit_cells.y,
        list(bundle.labels),
        [Path(n) for n in fit_cells.names],
        f"{fit_cells.split} (site, fitted)",
        hashlib.sha256("\n".join([fit_cells.fingerprint, *fit_cells.names]).encode()).hexdigest(),
    )


def _edgetpu(out_dir: Path) -> str:
    """`edge compile`'s steps on the new bundle where the compiler is installed; one line either way."""
    compiler = find_compiler()
    if compiler is None:
        return (
            f"Edge TPU: edgetpu_compiler is not installed here, so no {EDGETPU_MODEL}; "
            f"run `edge compile {out_dir}` on an x86-64 Debian host that has it"
        )
    bundle = Bundle.load(out_dir)
    made = compile_bundle(bundle, compiler, preflight(bundle.model_path().read_bytes()).to_dict())
    return f"Edge TPU: {EDGETPU_MODEL}, {made.get('ops_on_edgetpu', '?')} of {made.get('ops_total', '?')} ops on it"


def _prepare(
    bundle: Bundle, out_dir: Path, run: Path, cache, command: str
) -> tuple[ModelSource, QuantizeRequest]:
    """RUN's model, and the quantization to repeat; a bad bundle, run or output is one line, early."""
    if bundle.manifest.embedding is None:
        raise DataError(
            f"{bundle.path}: has no embedding output; edge adapt scores the site's cells with it "
            "(quantize with --reject mahalanobis, as models/differential-int8 is)"
        )
    if out_dir.resolve() == bundle.path.resolve():
        raise DataError(f"{out_dir}: is the bundle being adapted; write the new bundle to another folder")
    src = load_source(run)
    check_run(bundle, src, run)
    req = requantize_request(bundle, run, out_dir, cache, command)
    for stale in (ONNX_MODEL, EDGETPU_MODEL):  # never leave an old model beside the new manifest
        (out_dir / stale).unlink(missing_ok=True)
    return src, req


def _site_rejection(new: Bundle, cells, split, rbc_px) -> tuple[object, dict, dict | None]:
    """The device's rejection step on the re-quantized bundle: the site's class means join the centres
    and the threshold rises where the site's cells need it. (manifest, files, record)."""
    emb, _ = embed(
        Classifier.open(new, "cpu", threads=None), cells, new, rbc_px, "embedding the site's cells"
    )
    manifest = copy.deepcopy(new.manifest)
    extra, record = adapt_rejection(new, manifest, emb[split.fit], cells.y[split.fit])
    return manifest, {CPU_MODEL: new.model_path().read_bytes(), **extra}, record


def _fitted_line(bundle: Bundle, tuned: dict, fit: dict) -> str:
    return (
        f"fine-tuned {tuned['trainable_layers']} layers above {tuned['split_layer'] or 'the input'} on "
        f"{fit['n']} site cells {fit['per_class']} and {tuned['replay']['cells']} replayed training cells "
        f"({tuned['epochs']} epochs, {tuned['seconds']:.0f} s), re-quantized as {bundle.path.name} was"
    )


def adapt_on_host(
    bundle: Bundle,
    cells,
    out_dir: Path,
    request: SiteRequest,
    *,
    run: Path,
    epochs: int = 8,
    cache: Path | None = None,
) -> AdaptResult:
    """Calibrate `bundle` to the site of `cells` (edge.site_cells.SiteCells) by fine-tuning RUN's model:
    the new bundle, its record and the lines to print."""
    out_dir, run, seed = Path(out_dir), Path(run), request.seed
    src, req = _prepare(bundle, out_dir, run, cache, request.command)
    split, _, choice, preds_before = site_before(bundle, cells, request)
    fit_cells = cells.subset(split.fit)
    tuned = fine_tune(src, bundle, fit_cells, choice.rbc_px, FitOptions(epochs, seed, cache))
    req.site = _site_images(bundle, fit_cells, choice.rbc_px)
    with tempfile.TemporaryDirectory() as folder:
        quantized = quantize(req, _tuned_source(src, tuned.model, run, Path(folder)))
    manifest, files, rejection = _site_rejection(Bundle.load(out_dir), cells, split, choice.rbc_px)
    manifest.site = site_section(request.site_name or cells.split, "host", cells, split, choice.scale)
    record = site_record(
        bundle,
        cells,
        split,
        method="host",
        holdout=request.holdout,
        seed=seed,
        run={"path": str(run), "model_sha256": src.info["source_sha256"]},
        layer=f"the layers above {tuned.record['split_layer'] or 'the input'} fine-tuned, the model "
        "re-quantized with edge quantize's steps",
        fine_tune=tuned.record,
        quantize={"repeated": bundle.manifest.calibration.get("command"), "format": req.format},
        scale=choice.record(),
        rejection=rejection,
        gate=None,
        files_not_carried_over=[],
        command=request.command,
    )
    fitted = _fitted_line(bundle, tuned.record, record["fit"])
    result = seal(out_dir, files, manifest, record, cells, split, choice.rbc_px, preds_before, fitted)
    result.lines += [*_fidelity_lines(bundle, quantized), *(f"note: {m}" for m in quantized.messages)]
    result.lines.append(_edgetpu(out_dir))
    return result


def _fidelity_lines(bundle: Bundle, quantized) -> list[str]:
    """The training labs' accuracy after fine-tuning against the bundle's (what replay kept)."""
    if quantized.fidelity is None:
        return []
    report, old = quantized.fidelity, bundle.manifest.metric("accuracy")
    was = f" ({old.value * 100:.2f}% before, {old.split})" if old is not None else ""
    return [f"{report.split}: int8 accuracy {report.quant_accuracy * 100:.2f}% after fine-tuning{was}"]
