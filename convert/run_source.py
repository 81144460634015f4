"""What `edge quantize` converts: a training run directory, or a bare .keras model.

A run directory (written by `edge train`) holds model.keras, config.json and report.json. We read
the labels, preprocessing, architecture, weight source and training-data fingerprint from them
defensively (by several plausible key names), so the bundle records where the model came from.
A bare model gets its labels from the calibration folder's class names and the default
preprocessing at the model's input size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge.errors import DataError
from edge.hashing import sha256_file
from edge.preprocess import PreprocessSpec
from edge.schema import one_line

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


@dataclass
class ModelSource:
    model: object
    model_path: Path
    labels: list[str] | None  # None: take them from the calibration folders
    spec: PreprocessSpec
    info: dict = field(default_factory=dict)  # architecture, weights, data_fingerprint, run_dir, ...
    # version 2 with field_rbc: each source root's red-cell diameter in pixels, as training used it;
    # a root training never saw is measured when first asked for (scales_for)
    scales: dict[str, float] = field(default_factory=dict)

    def scales_for(self, images) -> dict[str, float]:
        """The scale of every root of `images` (an ImageSet), measured where not known yet."""
        if not self.spec.field_rbc:
            return {}
        from edge.scale import measure_files

        known = {str(Path(k)): v for k, v in self.scales.items()}
        for root in images.roots:
            if str(Path(root)) in known:
                continue
            found = measure_files([i.path for i in images.items if Path(i.source) == Path(root)])
            if found is None:
                raise DataError(f"{root}: too few red cells to measure its scale (edge.scale)")
            log.info(
                f"scale of {root}: red cells {found.rbc_px:g} px across ({found.cells} in {found.images} images)"
            )
            known[str(Path(root))] = self.scales[str(root)] = found.rbc_px
        return known


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def find_key(data, names: tuple[str, ...], depth: int = 3):
    """The first value under any of `names`, searching nested dicts breadth-first up to `depth`."""
    level = [data]
    for _ in range(depth):
        nxt = []
        for d in level:
            if not isinstance(d, dict):
                continue
            for name in names:
                if name in d and d[name] not in (None, "", [], {}):
                    return d[name]
            nxt.extend(v for v in d.values() if isinstance(v, dict))
        level = nxt
    return None


def _load_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises ValueError / OSError / zipfile errors for a bad file
        raise DataError(
            f"{path}: cannot load as a Keras model ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None


def _input_size(model, path: Path) -> int:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3 or shape[1] != shape[2] or shape[1] is None:
        raise DataError(f"{path}: model input must be N x S x S x 3 (0-255 RGB), got {shape}")
    return int(shape[1])


def _spec_from(config: dict, size: int) -> PreprocessSpec:
    raw = find_key(config, ("preprocess", "preprocess_spec"))
    if not isinstance(raw, dict):
        log.warning("warning: run config has no preprocess spec; using the default at the model's input size")
        return PreprocessSpec(size=size)
    try:
        return PreprocessSpec.model_validate({**raw, "size": size})
    except ValidationError as exc:
        raise DataError(f"run config: bad preprocess spec ({one_line(exc)})") from None


def load_source(path: str | Path) -> ModelSource:
    path = Path(path)
    if path.is_dir():
        model_path = path / MODEL_FILE
        if not model_path.exists():
            raise DataError(f"{path}: no {MODEL_FILE} (expected a run directory written by `edge train`)")
        config = _read_json(path / "config.json")
        report = _read_json(path / "report.json")
        both = {"config": config, "report": report}
    elif path.suffix == ".keras" and path.is_file():
        model_path, config, report, both = path, {}, {}, {}
    else:
        raise DataError(f"{path}: expected a run directory or a .keras model file")
    model = _load_keras(model_path)
    size = _input_size(model, model_path)
    labels = find_key(both, ("labels", "class_names", "classes"))
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise DataError(f"{path}: labels in the run files are not a list of names: {labels!r}")
    n_out = int(model.outputs[0].shape[-1])
    if labels is not None and len(labels) != n_out:
        raise DataError(f"{path}: {len(labels)} labels but the model outputs {n_out} classes")
    spec = _spec_from(config, size) if config else PreprocessSpec(size=size)
    weights = find_key(both, ("weights_source", "resolved_weights", "weights"))
    info = {
        "architecture": find_key(config, ("arch", "architecture")) or getattr(model, "name", "unknown"),
        "weights": weights if weights is not None else "unknown",
        "data_fingerprint": find_key(both, ("data_fingerprint", "fingerprint")),
        "source": str(model_path),
        "source_sha256": sha256_file(model_path),
        "n_outputs": n_out,
    }
    if path.is_dir():
        info["run_dir"] = str(path)
        info["run_config"] = config
        val = find_key(report, ("val",), depth=2)
        if isinstance(val, dict) and "accuracy" in val:
            info["run_val_accuracy"] = val["accuracy"]
    scales = find_key(config, ("scales",)) or {}
    if scales:
        info["scales"] = scales
    return ModelSource(model, model_path, labels, spec, info, dict(scales))
