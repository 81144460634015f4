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
- **Unchanged:** the backbone and its BatchNorm statistics (int8 weights on the device), the
  preprocessing (colour standardisation already moves every image's background to the bundle's
  white reference; the site's background colour and the gains it needs are recorded), the
  uncertainty rule.

It runs where the bundle runs, without TensorFlow: the int8 weights and bias of the last
FULLY_CONNECTED are re-quantized in the model file (the TFLite schema's object API), with the logits'
range widened to hold the site's logits, and the new bundle is loaded and scored by the device's
own code. The held-back site cells (never fitted) give the before/after numbers in the manifest.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.bundle import CPU_MODEL, EDGETPU_MODEL, ONNX_MODEL, Bundle, Metric, write_bundle
from edge.dataset import ImageSet, load_array
from edge.errors import DataError
from edge.rejection import MahalanobisScorer

MIN_PER_CLASS = 3  # a class with fewer site cells is left out of the fit (its row keeps the bundle's)
MIN_FIT = 6  # fewer fit cells than this in all: nothing to learn from
STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)  # L2 pull towards the bundle's weights, chosen by cross-validation
# The rejection threshold may rise to hold the site's own cells (their left-out distances), by at most
# this factor: a site whose cells are that unlike the training cells needs more than a new head.
MAX_THRESHOLD_RISE = 3.0


# --- the last layer in the model file ---------------------------------------------------------------


def _schema():
    from edge.contract import _schema as schema

    return schema()


def _op_name(model, op) -> str:
    schema = _schema()
    code = model.operatorCodes[op.opcodeIndex]
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((k for k, v in vars(schema.BuiltinOperator).items() if v == value), str(value))


_ACTIVATIONS = {0: None, 1: (0.0, np.inf), 3: (0.0, 6.0)}  # TFLite fused activation: NONE, RELU, RELU6


@dataclass
class Head:
    """The last FULLY_CONNECTED of an int8 classifier (its output goes into SOFTMAX), dequantized.

    `lead` is the FULLY_CONNECTED before it (weights, bias, activation range), dequantized, when the
    bundle's embedding is that layer's input (rejection on the pooled features) rather than this one's:
    `features` then computes this layer's input from the embedding in float."""

    weights: np.ndarray  # C x D float
    bias: np.ndarray  # C float
    weight_tensor: int
    bias_tensor: int
    logits_tensor: int
    input_scale: float
    per_channel: bool
    input_tensor: int = -1
    lead: tuple | None = None

    def features(self, embedding: np.ndarray) -> np.ndarray:
        """The last layer's input for the model's embedding output."""
        if self.lead is None:
            return np.asarray(embedding, np.float64)
        w, b, clip = self.lead
        x = np.asarray(embedding, np.float64) @ w.T + b
        return x if clip is None else np.clip(x, *clip)


def _quant(tensor) -> tuple[np.ndarray, np.ndarray]:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        raise DataError("the model's last layer is not int8-quantized: edge adapt needs a full-int8 bundle")
    return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.int64)


def _buffer_array(model, tensor, dtype) -> np.ndarray:
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        raise DataError("the model's last layer has no constant weights to re-fit")
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(tuple(tensor.shape))


def _fully_connected(model, graph, fc) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Dequantized (weights, bias) of an int8 FULLY_CONNECTED, its input scale, and whether its weights
    are quantized per channel."""
    x, w, b = (graph.tensors[int(i)] for i in fc.inputs[:3])
    x_scale, _ = _quant(x)
    w_scale, _ = _quant(w)
    w_int = _buffer_array(model, w, np.int8).astype(np.float64)
    b_int = _buffer_array(model, b, np.int32).astype(np.float64)
    per_channel = len(w_scale) == w_int.shape[0] > 1
    scales = w_scale if per_channel else np.full(w_int.shape[0], w_scale[0])
    return w_int * scales[:, None], b_int * scales * x_scale[0], float(x_scale[0]), per_channel


def read_head(model_bytes: bytes, embedding_name: str | None = None):
    """(the unpacked model, its Head): the FULLY_CONNECTED whose output feeds the SOFTMAX, and how
    the output named `embedding_name` leads to its input."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    softmax = [op for op in graph.operators if _op_name(model, op) == "SOFTMAX"]
    fc = producer.get(int(softmax[0].inputs[0])) if softmax else None
    if fc is None or _op_name(model, fc) != "FULLY_CONNECTED" or len(fc.inputs) < 3 or fc.inputs[2] < 0:
        raise DataError(
            "no FULLY_CONNECTED layer with a bias before the softmax: not an edge train classifier"
        )
    _quant(graph.tensors[int(fc.outputs[0])])
    weights, bias, x_scale, per_channel = _fully_connected(model, graph, fc)
    head = Head(
        weights=weights,
        bias=bias,
        weight_tensor=int(fc.inputs[1]),
        bias_tensor=int(fc.inputs[2]),
        logits_tensor=int(fc.outputs[0]),
        input_scale=x_scale,
        per_channel=per_channel,
        input_tensor=int(fc.inputs[0]),
    )
    if embedding_name is not None:
        head.lead = _lead(model, graph, producer, head, embedding_name)
    return model, head


def _lead(model, graph, producer, head: Head, embedding_name: str):
    """None when the embedding output is the head's input; the layer before when it is that one's."""
    outputs = [int(i) for i in graph.outputs if _name(graph.tensors[int(i)].name) == embedding_name]
    if not outputs:
        raise DataError(f"the model has no output named {embedding_name!r} (the manifest's embedding)")
    source = outputs[0]
    op = producer.get(source)
    if op is not None and _op_name(model, op) in ("QUANTIZE", "DEQUANTIZE"):  # uint8 I/O wraps outputs
        source = int(op.inputs[0])
    if source == head.input_tensor:
        return None
    lead = producer.get(head.input_tensor)
    if lead is not None and _op_name(model, lead) == "FULLY_CONNECTED" and int(lead.inputs[0]) == source:
        weights, bias, _, _ = _fully_connected(model, graph, lead)
        activation = getattr(lead.builtinOptions, "fusedActivationFunction", 0)
        if activation not in _ACTIVATIONS:
            raise DataError(
                f"the layer before the last has an activation edge adapt does not know ({activation})"
            )
        return weights, bias, _ACTIVATIONS[activation]
    raise DataError("the model's embedding is neither the last layer's input nor the layer's before it")


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def write_head(
    model_bytes: bytes, weights: np.ndarray, bias: np.ndarray, logit_range: tuple[float, float]
) -> bytes:
    """The model with the last layer's weights and bias re-quantized (symmetric int8 weights, per
    channel where the converter made them so; int32 bias at input scale x weight scale) and the
    logits' int8 range set to `logit_range`."""
    import flatbuffers

    from edge.contract import FILE_IDENTIFIER

    model, head = read_head(model_bytes)
    graph = model.subgraphs[0]
    w_t, b_t, out_t = (graph.tensors[i] for i in (head.weight_tensor, head.bias_tensor, head.logits_tensor))
    weights, bias = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    if weights.shape != head.weights.shape or bias.shape != head.bias.shape:
        raise ValueError(f"new head {weights.shape} / {bias.shape} does not fit {head.weights.shape}")
    peak = np.abs(weights).max(axis=1) if head.per_channel else np.full(len(weights), np.abs(weights).max())
    scales = np.maximum(peak, 1e-8) / 127.0
    w_int = np.clip(np.rint(weights / scales[:, None]), -127, 127).astype(np.int8)
    b_int = np.rint(bias / (scales * head.input_scale)).astype(np.int64)
    if np.abs(b_int).max() >= 2**31:
        raise ValueError("re-fitted bias does not fit int32")
    model.buffers[w_t.buffer].data = np.frombuffer(w_int.tobytes(), np.uint8)
    model.buffers[b_t.buffer].data = np.frombuffer(b_int.astype(np.int32).tobytes(), np.uint8)
    w_t.quantization.scale = (scales if head.per_channel else scales[:1]).astype(np.float32)
    w_t.quantization.zeroPoint = np.zeros(len(w_t.quantization.scale), np.int64)
    b_t.quantization.scale = ((scales if head.per_channel else scales[:1]) * head.input_scale).astype(
        np.float32
    )
    b_t.quantization.zeroPoint = np.zeros(len(b_t.quantization.scale), np.int64)
    lo, hi = min(0.0, logit_range[0]), max(0.0, logit_range[1])
    scale = max(hi - lo, 1e-6) / 255.0
    out_t.quantization.scale = np.array([scale], np.float32)
    out_t.quantization.zeroPoint = np.array([int(np.clip(np.rint(-128 - lo / scale), -128, 127))], np.int64)
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def logit_range_of(model_bytes: bytes) -> tuple[float, float]:
    """The float range the logits' int8 tensor can hold now."""
    model, head = read_head(model_bytes)
    scale, zero = _quant(model.subgraphs[0].tensors[head.logits_tensor])
    return float((-128 - zero[0]) * scale[0]), float((127 - zero[0]) * scale[0])


# --- fitting the last layer ---------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_head(
    x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, strength: float, steps: int = 1500
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced cross-entropy on (x, y) + strength/2 * |(W, b) - (W0, b0)|^2, by Adam on the
    full batch (a few hundred cells x 129 weights a class: milliseconds)."""
    x = np.asarray(x, np.float64)
    counts = np.bincount(y, minlength=len(w0)).astype(np.float64)
    weight = 1.0 / counts[y]
    weight /= weight.sum()
    params = [w0.astype(np.float64).copy(), b0.astype(np.float64).copy()]
    anchors = [w0.astype(np.float64), b0.astype(np.float64)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    # Embeddings are ReLU outputs of a few units; a step of 1 % of their typical size moves logits gently.
    lr = 0.01 / max(float(np.abs(x).mean()), 1e-3)
    for t in range(1, steps + 1):
        g = _softmax(x @ params[0].T + params[1])
        g[np.arange(len(y)), y] -= 1.0
        g *= weight[:, None]
        grads = [g.T @ x, g.sum(axis=0)]
        for k in range(2):
            grads[k] = grads[k] + strength * (params[k] - anchors[k])
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
            params[k] -= lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
    return params[0], params[1]


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k folds of indices, each class spread over them."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        for j, i in enumerate(members):
            folds[(j + offset) % k].append(int(i))
        offset += len(members)
    return [np.array(sorted(f), int) for f in folds if f]


def choose_strength(x, y, w0, b0, seed: int, strengths=STRENGTHS) -> tuple[float, dict]:
    """The pull whose fit predicts the left-out fold best (k-fold, k = min(5, smallest class));
    ties go to the stronger pull, which changes the bundle least."""
    k = int(min(5, np.bincount(y)[np.unique(y)].min()))
    if k < 2:
        return strengths[-1], {}
    folds = stratified_folds(y, k, seed)
    scores = {}
    for s in strengths:
        right = 0
        for held in folds:
            fit = np.setdiff1d(np.arange(len(y)), held)
            w, b = fit_head(x[fit], y[fit], w0, b0, s, steps=600)
            right += int(((x[held] @ w.T + b).argmax(1) == y[held]).sum())
        scores[s] = right / len(y)
    best = max(scores.values())
    return max(s for s in strengths if scores[s] == best), {f"{s:g}": round(v, 4) for s, v in scores.items()}


# --- the site data --------------------------------------------------------------------------------------


@dataclass
class SiteSplit:
    fit: np.ndarray  # indices into the loaded site images
    held: np.ndarray
    left_out: dict[str, int] = field(default_factory=dict)  # class -> cells, too few to fit on


def split_site(y: np.ndarray, labels: list[str], holdout: float, seed: int) -> SiteSplit:
    """Per class: `holdout` of the cells held back (at least one where a class has 3 or more), the
    rest fitted; classes with fewer than MIN_PER_CLASS cells are only held back (never fitted)."""
    rng = np.random.default_rng(seed)
    fit, held, left_out = [], [], {}
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        if len(members) < MIN_PER_CLASS:
            left_out[labels[c]] = len(members)
            held += members.tolist()
            continue
        n_held = int(round(holdout * len(members)))
        if holdout > 0:
            n_held = min(max(n_held, 1), len(members) - 2)
        held += members[:n_held].tolist()
        fit += members[n_held:].tolist()
    return SiteSplit(np.array(sorted(fit), int), np.array(sorted(held), int), left_out)


def site_background(images_bgr) -> list[float]:
    """Median background colour (R, G, B) of the site's images, as white balance measures it."""
    from edge.preprocess import background_rgb

    return [round(float(v), 1) for v in np.median(np.stack([background_rgb(i) for i in images_bgr]), axis=0)]


# --- the whole step ---------------------------------------------------------------------------------------


@dataclass
class AdaptResult:
    bundle: Bundle
    record: dict
    lines: list[str]


def _embed(classifier, images: np.ndarray, batch: int = 16) -> tuple[np.ndarray, list]:
    """Embeddings and predictions of preprocessed images, through the device's backend."""
    embeddings, preds = [], []
    for start in range(0, len(images), batch):
        preds += classifier.classify_tensors(images[start : start + batch])
        embeddings.append(classifier.backend.embedding())
    return np.concatenate(embeddings), preds


def _scores(preds, y: np.ndarray, labels: list[str]) -> dict:
    if not len(y):
        return {"n": 0, "accuracy": None, "recall": {}, "rejected_fraction": None, "flagged_fraction": None}
    right = [p.label == labels[t] for p, t in zip(preds, y, strict=True)]
    per_class = {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        per_class[labels[c]] = round(float(np.mean([right[i] for i in idx])), 4)
    return {
        "n": len(y),
        "accuracy": round(float(np.mean(right)), 4) if len(y) else None,
        "recall": per_class,
        "rejected_fraction": round(float(np.mean([p.label == "unknown" for p in preds])), 4),
        "flagged_fraction": round(float(np.mean([p.uncertain for p in preds])), 4),
    }


def adapt(
    bundle: Bundle,
    site: ImageSet,
    out_dir: Path,
    holdout: float = 0.25,
    seed: int = 0,
    command: str = "",
    say=print,
) -> AdaptResult:
    from edge.predict import Classifier
    from edge.preprocess import load_image

    if bundle.manifest.embedding is None:
        raise DataError(
            f"{bundle.path}: has no embedding output; edge adapt re-fits the layer after it "
            "(quantize with --reject mahalanobis, as models/differential-int8 is)"
        )
    labels = bundle.labels
    loaded = load_array(site.files, bundle.preprocess_spec)  # names each unreadable file, once
    kept = site.subset(loaded.ok)
    images, y = loaded.images, kept.targets
    split = split_site(y, labels, holdout, seed)
    for name, n in split.left_out.items():
        say(
            f"warning: {name}: {n} cell(s), fewer than {MIN_PER_CLASS}: not fitted (the bundle's weights kept)"
        )
    if len(split.fit) < MIN_FIT or len(np.unique(y[split.fit])) < 2:
        raise DataError(
            f"{site.split}: {len(split.fit)} cells to fit on in {len(np.unique(y[split.fit]))} class(es) "
            f"after holding back {holdout:g}: need at least {MIN_FIT} in 2 classes ({MIN_PER_CLASS}+ per class)"
        )
    before = Classifier.open(bundle, "cpu", threads=None)
    emb, preds_before = _embed(before, images)
    model_bytes = bundle.model_path().read_bytes()
    _, head = read_head(model_bytes, bundle.manifest.embedding.name)
    features = head.features(emb)  # the last layer's input (the embedding itself, or one layer on)
    x_fit, y_fit = features[split.fit], y[split.fit]
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
    manifest = copy.deepcopy(bundle.manifest)
    extra, rejection_record = {}, None
    if bundle.manifest.rejection is not None:
        rejection = bundle.manifest.rejection
        scorer = MahalanobisScorer.load(bundle.path / rejection.file)
        extra[rejection.file] = scorer.with_centres(emb[split.fit], y_fit).to_bytes()
        spread = scorer.left_out_scores(emb[split.fit], y_fit)
        wanted = float(np.quantile(spread, 0.99)) if len(spread) else 0.0
        threshold = round(min(MAX_THRESHOLD_RISE * rejection.threshold, max(rejection.threshold, wanted)), 4)
        rejection_record = {
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
    backgrounds = site_background([_bgr(load_image(kept.files[i])) for i in split.fit])
    # The new bundle holds what was re-made: model.onnx and the Edge TPU model describe the old head.
    dropped = [n for n in (ONNX_MODEL, EDGETPU_MODEL) if n in manifest.files]
    manifest.files = {}
    manifest.edgetpu = None
    manifest.model = {k: v for k, v in manifest.model.items() if k != "onnx"}
    record = {
        "from_bundle": {"path": str(bundle.path), "sha256": bundle.sha256},
        "site": {
            "split": site.split,
            "fingerprint": kept.fingerprint(),
            "n": len(kept),
            "per_class": {k: v for k, v in kept.counts().items() if v},
            "unreadable": [f"{p}: {r}" for p, r in loaded.skipped],
        },
        "holdout": holdout,
        "seed": seed,
        "fit": {"n": len(split.fit), "per_class": _counts(y[split.fit], labels)},
        "held_back": {"n": len(split.held), "per_class": _counts(y[split.held], labels)},
        "left_out_classes": split.left_out,
        "layer": "last FULLY_CONNECTED (embedding -> class scores), int8 weights re-quantized",
        "l2_strength": strength,
        "cross_validation_accuracy": cv,
        "rejection": rejection_record,
        "site_background_rgb": backgrounds,
        "white_reference_rgb": list(bundle.preprocess_spec.white_reference or []) or None,
        "files_not_carried_over": dropped,
        "command": command,
    }
    manifest.calibration = {**manifest.calibration, "site_adaptation": record}
    out_dir = Path(out_dir)
    if out_dir.resolve() == bundle.path.resolve():
        raise DataError(f"{out_dir}: is the bundle being adapted; write the new bundle to another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ONNX_MODEL, EDGETPU_MODEL):  # never leave an old model beside the new manifest
        (out_dir / stale).unlink(missing_ok=True)
    write_bundle(out_dir, {CPU_MODEL: new_bytes, **extra}, manifest)
    adapted = Bundle.load(out_dir)  # verify what we wrote, as the device will
    after = Classifier.open(adapted, "cpu", threads=None)
    _, preds_after = _embed(after, images)
    held = split.held
    record["before"] = _scores([preds_before[i] for i in held], y[held], labels)
    record["after"] = _scores([preds_after[i] for i in held], y[held], labels)
    record["after_on_fit_cells"] = _scores([preds_after[i] for i in split.fit], y[split.fit], labels)
    split_name = f"{site.split} held back ({len(held)})"
    for name, key in (("site_accuracy_before", "before"), ("site_accuracy_after", "after")):
        if (value := record[key]["accuracy"]) is not None:
            metric = Metric(name=name, value=value, split=split_name, n=len(held), command=command)
            manifest.metrics.append(metric)
    manifest.calibration["site_adaptation"] = record
    write_bundle(out_dir, {CPU_MODEL: new_bytes, **extra}, manifest)  # the same files, the final manifest
    return AdaptResult(Bundle.load(out_dir), record, _summary(record, out_dir))


def _bgr(image: np.ndarray) -> np.ndarray:
    from edge.preprocess import to_bgr8

    return to_bgr8(image)


def _counts(y: np.ndarray, labels: list[str]) -> dict[str, int]:
    return {labels[c]: int((y == c).sum()) for c in np.unique(y)}


def _summary(record: dict, out_dir: Path) -> list[str]:
    b, a = record["before"], record["after"]

    def pct(v):
        return "-" if v is None else f"{v * 100:.1f}%"

    lines = [
        f"fitted the last layer on {record['fit']['n']} cells {record['fit']['per_class']} "
        f"(L2 pull {record['l2_strength']:g}, chosen by cross-validation {record['cross_validation_accuracy']})",
        f"held back {record['held_back']['n']} cells (never fitted): accuracy {pct(b['accuracy'])} before -> {pct(a['accuracy'])} after; "
        f"rejected {pct(b['rejected_fraction'])} -> {pct(a['rejected_fraction'])}; "
        f"flagged {pct(b['flagged_fraction'])} -> {pct(a['flagged_fraction'])}",
        "per class after: " + ", ".join(f"{k} {pct(v)}" for k, v in a["recall"].items()),
        f"site background (R, G, B) {record['site_background_rgb']}; bundle white reference "
        f"{record['white_reference_rgb']}",
        f"bundle: {out_dir}",
    ]
    if record["files_not_carried_over"]:
        lines.append(
            f"note: {', '.join(record['files_not_carried_over'])} not carried over (they hold the old head): "
            "run edge export / edge compile on the new bundle"
        )
    return lines
