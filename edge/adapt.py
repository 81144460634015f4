"""Site calibration (`edge adapt`): a bundle re-fitted to one microscope from a few labelled cells of it.

What changes, and why only that:

- **The last layer** (the embedding -> class scores): a multinomial logistic regression on the site
  cells' embeddings, pulled towards the bundle's own weights (an L2 penalty whose strength is chosen
  by cross-validation on the fit cells). Twenty cells a class are enough for 9 x 129 numbers, not for
  a backbone; a class the site has no cells of keeps what it had.
- **Rejection:** the site's class means join the training ones as centres of the Mahalanobis score,
  so the site's own cells are no longer "unlike the training data", and the training cells still are
  not. Where the site's cells scatter more than the training cells did, the threshold rises to the
  99th percentile of their distances to their class's site centre (each cell left out of its centre),
  at most MAX_THRESHOLD_RISE times the bundle's.
- **The scale** (bundles that cut cells at a physical size, preprocessing version 2): measured from the
  site's red cells, then the candidates around it (or, where no red cell can be measured, around the
  image's own side) are tried, and the one at which the cross-validated fit classifies the site's
  cells best is the site's scale. It is recorded in `manifest.site` and sealed in the model.
- **The gate:** set again on the site's own cells, never stricter than the bundle's, so that the
  daemon notices a slide from another microscope under this calibration too.
- **Unchanged:** the backbone and its BatchNorm statistics (int8 weights on the device), the colour
  standardisation (every image's background already goes to the bundle's white reference; the site's
  background colour and the gains it needs are recorded), the uncertainty rule.

It runs where the bundle runs, without TensorFlow: the int8 weights and bias of the last
FULLY_CONNECTED are re-quantized in the model file (the TFLite schema's object API), with the logits'
range widened to hold the site's logits, and the new bundle is loaded and scored by the device's
own code. The held-back site cells (never fitted) give the before/after numbers in the manifest.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge import golden
from edge.adapt_report import counts, scores, summary
from edge.bundle import CPU_MODEL, EDGETPU_MODEL, ONNX_MODEL, Bundle, Metric, write_bundle
from edge.errors import DataError
from edge.head_fit import choose_strength, fit_head
from edge.predict import Classifier
from edge.preprocess import background_rgb
from edge.progress import progress
from edge.rejection import MahalanobisScorer
from edge.scale import Scale
from edge.site_calibration import (
    ScaleChoice,
    choose_scale,
    held_back_summary,
    physical,
    site_gate,
    site_section,
)
from edge.site_cells import SiteCells
from edge.splits import stratified_split
from edge.tflite_edit import logit_range_of, read_head, write_head

log = logging.getLogger(__name__)

MIN_PER_CLASS = 3  # a class with fewer site cells is left out of the fit (its row keeps the bundle's)
MIN_FIT = 6  # fewer fit cells than this in all: nothing to learn from
# The rejection threshold may rise to hold the site's own cells (their left-out distances), by at most
# this factor: a site whose cells are that unlike the training cells needs more than a new head.
MAX_THRESHOLD_RISE = 3.0


# --- the site data --------------------------------------------------------------------------------------


@dataclass
class SiteSplit:
    fit: np.ndarray  # indices into the site cells
    held: np.ndarray
    left_out: dict[str, int] = field(default_factory=dict)  # class -> cells, too few to fit on


def split_site(y: np.ndarray, labels: list[str], holdout: float, seed: int, where: str = "site") -> SiteSplit:
    """Per class: `holdout` of the cells held back (at least one where a class has 3 or more), the
    rest fitted; classes with fewer than MIN_PER_CLASS cells are only held back (never fitted)."""
    fit, held = stratified_split(y, holdout, seed, min_rest=MIN_PER_CLASS - 1)
    sizes = counts(y, labels)
    split = SiteSplit(fit, held, {name: n for name, n in sizes.items() if n < MIN_PER_CLASS})
    for name, n in split.left_out.items():
        log.warning(
            f"warning: {name}: {n} cell(s), fewer than {MIN_PER_CLASS}: not fitted (the bundle's weights kept)"
        )
    if len(fit) < MIN_FIT or len(np.unique(y[fit])) < 2:
        raise DataError(
            f"{where}: {len(fit)} cells to fit on in {len(np.unique(y[fit]))} class(es) after holding back "
            f"{holdout:g}: need at least {MIN_FIT} in 2 classes ({MIN_PER_CLASS}+ per class)"
        )
    return split


def site_background(images_bgr) -> list[float]:
    """Median background colour (R, G, B) of the site's images, as white balance measures it."""
    return [round(float(v), 1) for v in np.median(np.stack([background_rgb(i) for i in images_bgr]), axis=0)]


# --- the whole step ---------------------------------------------------------------------------------------


@dataclass
class AdaptResult:
    bundle: Bundle
    record: dict
    lines: list[str]


def embed(
    classifier, cells: SiteCells, bundle: Bundle, rbc_px: float | None, desc: str
) -> tuple[np.ndarray, list]:
    """Embeddings and predictions of `cells` preprocessed for `bundle` at `rbc_px`, through the
    device's backend, a batch at a time (a bar named `desc` on a terminal)."""
    embeddings, preds = [], []
    with progress(total=len(cells), desc=desc, unit="cell", note=False, leave=False) as bar:
        for images in cells.batches(bundle, rbc_px):
            preds += classifier.classify_tensors(images)
            embeddings.append(classifier.backend.embedding())
            bar.update(len(images))
    return np.concatenate(embeddings), preds


@dataclass
class Refit:
    model_bytes: bytes  # the model with the re-fitted last layer
    strength: float
    cross_validation: dict


def refit_last_layer(bundle: Bundle, emb: np.ndarray, y: np.ndarray, fit: np.ndarray, seed: int) -> Refit:
    """The last layer fitted on the fit cells and written back into the model, the logits' int8 range
    widened to hold every site cell's logits."""
    model_bytes = bundle.model_bytes()
    _, head = read_head(model_bytes, bundle.manifest.embedding.name)
    features = head.features(emb)  # the last layer's input (the embedding itself, or one layer on)
    x_fit, y_fit = features[fit], y[fit]
    strength, cv = choose_strength(x_fit, y_fit, head.weights, head.bias, seed)
    weights, bias = fit_head(x_fit, y_fit, head.weights, head.bias, strength)
    logits = features @ weights.T + bias
    old_lo, old_hi = logit_range_of(model_bytes)
    margin = 0.1 * (logits.max() - logits.min())
    new_bytes = write_head(
        model_bytes,
        weights,
        bias,
        (min(old_lo, float(logits.min()) - margin), max(old_hi, float(logits.max()) + margin)),
    )
    return Refit(new_bytes, strength, cv)


def adapt_rejection(
    bundle: Bundle, manifest, emb_fit: np.ndarray, y_fit: np.ndarray
) -> tuple[dict, dict | None]:
    """The site's class means added to the rejection centres, the threshold raised where the site's
    cells need it: (the new rejection file, by name; its record), ({}, None) without rejection."""
    if bundle.manifest.rejection is None:
        return {}, None
    rejection = bundle.manifest.rejection
    scorer = MahalanobisScorer.load(bundle.path / rejection.file, bundle.read(rejection.file))
    extra = {rejection.file: scorer.with_centres(emb_fit, y_fit).to_bytes()}
    spread = scorer.left_out_scores(emb_fit, y_fit)
    wanted = float(np.quantile(spread, 0.99)) if len(spread) else 0.0
    threshold = round(min(MAX_THRESHOLD_RISE * rejection.threshold, max(rejection.threshold, wanted)), 4)
    record = {
        "centres_added": int(len(np.unique(y_fit))),
        "threshold_before": rejection.threshold,
        "threshold_after": threshold,
        "site_left_out_score_q99": round(wanted, 4),
    }
    if threshold != rejection.threshold:
        manifest.rejection.threshold = threshold
        manifest.rejection.source += (
            f"; raised by edge adapt to {threshold:g}, the 99th percentile of the site cells' distances to "
            f"their class's site centre (left out), at most {MAX_THRESHOLD_RISE:g}x"
        )
    return extra, record


def _drop_old_models(manifest) -> list[str]:
    """The new bundle holds what was re-made: model.onnx and the Edge TPU model describe the old head."""
    dropped = [n for n in (ONNX_MODEL, EDGETPU_MODEL) if n in manifest.files]
    manifest.files = {}
    manifest.edgetpu = None
    manifest.model = {k: v for k, v in manifest.model.items() if k != "onnx"}
    return dropped


def site_record(bundle: Bundle, cells: SiteCells, split: SiteSplit, **fields) -> dict:
    """What `edge adapt` records of the site's cells and their split (manifest calibration.site_adaptation),
    with `fields`, what the calibration itself did (device or host)."""
    y, labels = cells.y, bundle.labels
    return {
        "from_bundle": {"path": str(bundle.path), "sha256": bundle.sha256},
        "site": {
            "split": cells.split,
            "fingerprint": cells.fingerprint,
            "n": len(cells),
            "per_class": counts(y, labels),
            "unreadable": [f"{p}: {r}" for p, r in cells.skipped],
        },
        "fit": {"n": len(split.fit), "per_class": counts(y[split.fit], labels)},
        "held_back": {"n": len(split.held), "per_class": counts(y[split.held], labels)},
        "left_out_classes": split.left_out,
        **fields,
        "site_background_rgb": site_background([cells.images[i] for i in split.fit]),
        "white_reference_rgb": list(bundle.preprocess_spec.white_reference or []) or None,
    }


def score_held_back(
    record: dict, manifest, y: np.ndarray, split: SiteSplit, before: list, after: list, labels, where, command
):
    """The held-back cells before and after, into the record and the manifest's metrics."""
    held, fit = split.held, split.fit
    record["before"] = scores([before[i] for i in held], y[held], labels)
    record["after"] = scores([after[i] for i in held], y[held], labels)
    record["after_on_fit_cells"] = scores([after[i] for i in fit], y[fit], labels)
    split_name = f"{where} held back ({len(held)})"
    for name, key in (("site_accuracy_before", "before"), ("site_accuracy_after", "after")):
        if record[key]["accuracy"] is not None:
            manifest.metrics.append(
                Metric(
                    name=name, value=record[key]["accuracy"], split=split_name, n=len(held), command=command
                )
            )
    manifest.calibration["site_adaptation"] = record


def site_scale(
    bundle: Bundle,
    classifier: Classifier,
    cells: SiteCells,
    split: SiteSplit,
    rbc_px: float | None,
    seed: int,
) -> tuple[ScaleChoice, Scale | None]:
    """(the site's scale, the red cells' measurement or None): `rbc_px` if given, else the candidate
    around the red cells' measurement at which the last layer's fit, cross-validated on the fit cells,
    is best (edge/site_calibration.py choose_scale). The host path (`--host`) takes the same choice."""
    measured = cells.measured_scale() if physical(bundle) else None
    fit_cells = cells.subset(split.fit)

    def cv_accuracy(rbc: float) -> float:  # the fit, cross-validated on the fit cells cut at `rbc`
        emb_fit, _ = embed(classifier, fit_cells, bundle, rbc, f"trying the scale {rbc:g} px")
        _, head = read_head(bundle.model_path().read_bytes(), bundle.manifest.embedding.name)
        _, cv = choose_strength(head.features(emb_fit), fit_cells.y, head.weights, head.bias, seed)
        return max(cv.values()) if cv else 0.0

    return choose_scale(bundle, cells, measured, rbc_px, cv_accuracy), measured


@dataclass(frozen=True)
class SiteRequest:
    """What `edge adapt` asks of either calibration, the device's (adapt) and the host's
    (convert/host_adapt.py): the share of cells held back, the seed, the command to record, the site's
    name (None: the cells' folder's) and its red-cell diameter (None: found on the cells)."""

    holdout: float = 0.25
    seed: int = 0
    command: str = ""
    site_name: str | None = None
    rbc_px: float | None = None


def site_before(
    bundle: Bundle, cells: SiteCells, request: SiteRequest
) -> tuple[SiteSplit, Classifier, ScaleChoice, list]:
    """What both calibrations do first: (the held-back split, the bundle's classifier, the site's scale,
    and the cells' predictions before calibration, cut as an uncalibrated run would cut them)."""
    split = split_site(cells.y, bundle.labels, request.holdout, request.seed, cells.split)
    before = Classifier.open(bundle, "cpu", threads=None)
    choice, measured = site_scale(bundle, before, cells, split, request.rbc_px, request.seed)
    _, preds_before = embed(before, cells, bundle, measured and measured.rbc_px, "scoring before")
    return split, before, choice, preds_before


def adapt(bundle: Bundle, cells: SiteCells, out_dir: Path, request: SiteRequest) -> AdaptResult:
    if bundle.manifest.embedding is None:
        raise DataError(
            f"{bundle.path}: has no embedding output; edge adapt re-fits the layer after it "
            "(quantize with --reject mahalanobis, as models/differential-int8 is)"
        )
    out_dir = Path(out_dir)
    if out_dir.resolve() == bundle.path.resolve():
        raise DataError(f"{out_dir}: is the bundle being adapted; write the new bundle to another folder")
    y, seed = cells.y, request.seed
    split, before, choice, preds_before = site_before(bundle, cells, request)
    emb, _ = embed(before, cells, bundle, choice.rbc_px, "embedding the site's cells")
    refit = refit_last_layer(bundle, emb, y, split.fit, seed)
    manifest = copy.deepcopy(bundle.manifest)
    extra, rejection_record = adapt_rejection(bundle, manifest, emb[split.fit], y[split.fit])
    record = site_record(
        bundle,
        cells,
        split,
        holdout=request.holdout,
        seed=seed,
        layer="last FULLY_CONNECTED (embedding -> class scores), int8 weights re-quantized",
        l2_strength=refit.strength,
        cross_validation_accuracy=refit.cross_validation,
        scale=choice.record(),
        rejection=rejection_record,
        gate=None,
        files_not_carried_over=_drop_old_models(manifest),
        command=request.command,
    )
    manifest.site = site_section(request.site_name or cells.split, "device", cells, split, choice.scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ONNX_MODEL, EDGETPU_MODEL):  # never leave an old model beside the new manifest
        (out_dir / stale).unlink(missing_ok=True)
    files = {CPU_MODEL: refit.model_bytes, **extra}
    return seal(out_dir, files, manifest, record, cells, split, choice.rbc_px, preds_before)


def seal(
    out_dir: Path,
    files: dict,
    manifest,
    record: dict,
    cells: SiteCells,
    split: SiteSplit,
    rbc_px: float | None,
    preds_before: list,
    fitted: str | None = None,
) -> AdaptResult:
    """Write the calibrated bundle, then score the site's cells with it as the device will: the gate set
    again on them and the held-back cells before and after, sealed in the manifest (the same files).
    `fitted` is the summary's first line, what was fitted (default: the device's last layer)."""
    # the re-fitted model changes the outputs: the golden check is made again, here (edge/golden.py)
    manifest.golden, files[golden.GOLDEN_FILE] = golden.make(files[CPU_MODEL], manifest)
    write_bundle(out_dir, files, manifest)
    adapted = Bundle.load(out_dir)  # verify what we wrote, as the device will
    y, labels, command = cells.y, adapted.labels, record["command"]
    after = Classifier.open(adapted, "cpu", threads=None)
    emb, preds_after = embed(after, cells, adapted, rbc_px, "scoring after calibration")
    manifest.gate, record["gate"] = site_gate(adapted, emb, y, split, preds_after)
    score_held_back(record, manifest, y, split, preds_before, preds_after, labels, cells.split, command)
    manifest.site.held_back = held_back_summary(record, y, split, preds_before, preds_after, labels)
    write_bundle(out_dir, files, manifest)  # the same files, the final manifest (gate and site sealed)
    return AdaptResult(Bundle.load(out_dir), record, summary(record, out_dir, fitted))
