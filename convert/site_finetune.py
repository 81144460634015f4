"""`edge adapt --host`, the fit: the layers above the run's split layer fine-tuned on a site's cells
together with replayed training cells (after Chossegros et al. 2024, J Pathol Inform 15:100405, who
fine-tuned on <= 100 labelled cells of each target microscope after a colour transfer to one style).

- **What trains:** the layers above the split layer `edge train` fine-tuned (its `fine_tune_from`),
  BatchNorm frozen in inference mode as convert/train.py keeps it: a few hundred cells cannot estimate
  its statistics. Everything below runs once per view, its activations cached.
- **The site's fit cells** (never the held-back ones), each as it is and in augmented views: for
  preprocessing version 2, `convert.augment.physical_view` (scale and centre jittered as a measured
  scale and a detector's box vary, stain, lamp and optics); for version 1, edge train's seed
  augmentation of the model input.
- **Replayed training cells:** a class-balanced sample of the run's training sources at their own
  scales (and in training's own augmentation), so the model keeps what it knew of the training labs.
- **The weighting:** the site's views carry SITE_SHARE of the loss, the replayed cells the rest.
- **The colour:** no transfer is added here: preprocessing's white balance (version 2, `color:
  white_balance`) already maps every image's slide colour to the bundle's one white reference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.representative import balanced_sample
from convert.augment import augmented_views, build_physical_augmenter, physical_view
from convert.cache import load_images
from convert.features import activation_key, extract_views, make_predictor, make_sampler
from convert.models import DEFAULT_SPLIT, set_trainable, split_model
from convert.pipeline import Raw
from convert.run_source import ModelSource, find_key
from edge.dataset import parse_class_map, scan_labelled
from edge.errors import DataError
from edge.preprocess import View
from edge.progress import progress

log = logging.getLogger(__name__)

SITE_VIEWS = 8  # each fit cell as it is and in 7 augmented views: the site's cells are few
REPLAY_VIEWS = 2
REPLAY_PER_CLASS = 100
SITE_SHARE = 0.5  # of the loss, the site's views; the replayed training cells carry the rest
LR_FACTOR = 0.5  # of the run's fine-tuning learning rate: a few hundred cells, a short walk
BATCH = 32


@dataclass
class FitOptions:
    epochs: int = 8
    seed: int = 0
    cache: Path | None = None
    replay_per_class: int = REPLAY_PER_CLASS
    site_views: int = SITE_VIEWS
    replay_views: int = REPLAY_VIEWS
    site_share: float = SITE_SHARE


@dataclass
class FineTuned:
    model: object  # the whole Keras model (image -> softmax), fine-tuned
    record: dict


def split_layer(src: ModelSource) -> str | None:
    """The layer `edge train` fine-tuned above (None: the whole network)."""
    config = src.info.get("run_config") or {}
    name = find_key(config, ("fine_tune_from",))
    if name in (None, "auto"):
        name = DEFAULT_SPLIT.get(src.info.get("architecture"))
    if name == "input":
        return None
    if name not in {layer.name for layer in src.model.layers}:
        raise DataError(f"{src.model_path}: no layer {name!r} to fine-tune above (the run's fine_tune_from)")
    return name


def _site_batches(fit_cells, bundle, rbc_px, n_views: int, seed: int):
    """(view, uint8 batch) of the site's fit cells: view 0 as they are, the rest augmented."""
    spec = bundle.preprocess_spec
    clean = fit_cells.inputs(bundle, rbc_px)
    yield 0, clean
    if spec.version != 2:
        yield from augmented_views(clean, n_views, seed, "site", kind="seed")
        return
    for v in range(1, n_views):
        aug = build_physical_augmenter(seed * 1000 + v)
        out = np.empty_like(clean)
        for i, (image, view) in enumerate(zip(fit_cells.images, fit_cells.views, strict=True)):
            at = View(
                centre=view.centre, rbc_px=rbc_px if rbc_px else view.rbc_px, background=view.background
            )
            out[i] = physical_view(image, at, spec, aug, np.random.default_rng([seed, v, i]))
        yield v, out


def _activations(bottom, batches, n_views: int, n: int, cache: Path | None, key: str, desc: str):
    """(views, N, ...) outputs of `bottom` (float16) for each (view, batch), or the batches themselves
    when there is no bottom; kept in `cache` under `key`."""
    path = None if cache is None else Path(cache) / f"site-activations-{key}.npy"
    if path is not None and path.exists():
        log.info(f"{desc}: activations read from cache {path}")
        return np.load(path)
    predict = make_predictor(bottom) if bottom is not None else None
    out = None
    with progress(total=n_views * n, desc=desc) as bar:
        for v, batch in batches:
            part = batch if predict is None else _predict(predict, batch)
            if out is None:
                out = np.empty((n_views, *part.shape), part.dtype)
            out[v] = part
            bar.update(len(batch))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def _predict(predict, images: np.ndarray) -> np.ndarray:
    parts = [np.asarray(predict(images[s : s + 64].astype(np.float32))) for s in range(0, len(images), 64)]
    return np.concatenate(parts).astype(np.float16)


def replay_sample(src: ModelSource, labels: list[str], per_class: int, seed: int):
    """A class-balanced sample of the run's training sources (an ImageSet), `per_class` a class."""
    config = src.info.get("run_config") or {}
    roots = find_key(config, ("data_dir",))
    roots = [roots] if isinstance(roots, str) else list(roots or [])
    missing = [r for r in roots if not Path(r).is_dir()]
    if not roots or missing:
        raise DataError(
            f"{src.model_path.parent}: the run's training sources {missing or roots} are not here; "
            "the host path replays them (mount them where the run saw them)"
        )
    aliases = parse_class_map(find_key(config, ("class_map",)) or [])
    available = scan_labelled(roots, labels, aliases, dedupe=True)
    return balanced_sample(available, per_class * len(labels), seed)


def _replay_activations(built, src: ModelSource, spec, sample, opts: FitOptions):
    bottom, layer = built
    scales = src.scales_for(sample)
    views = sample.views(scales)
    loaded = load_images(
        sample.files, sample.hashes(), spec, opts.cache, "preprocess replayed cells", views=views
    )
    kept = sample.subset(loaded.ok)
    physical = spec.version == 2
    raw = Raw(None, None, kept.files, [views[i] for i in loaded.ok]) if physical else None
    key = activation_key(
        model=src.info.get("source_sha256"),
        split=layer,
        files=kept.hashes(),
        spec=spec.to_dict(),
        scales=scales,
        views=opts.replay_views,
        seed=opts.seed,
        replay=True,
    )
    acts = extract_views(
        bottom,
        loaded.images,
        opts.replay_views,
        opts.replay_views > 1,
        opts.seed,
        cache_dir=opts.cache,
        key=key,
        desc="replayed training cells",
        kind="stain" if physical else "seed",
        raw=raw,
        spec=spec,
    )
    return np.asarray(acts), kept.targets


def _site_activations(built, src: ModelSource, bundle, fit_cells, rbc_px, opts: FitOptions):
    bottom, layer = built
    spec = bundle.preprocess_spec
    key = activation_key(
        model=src.info.get("source_sha256"),
        split=layer,
        site=fit_cells.fingerprint,
        cells=fit_cells.names,
        spec=spec.to_dict(),
        rbc_px=rbc_px,
        views=opts.site_views,
        seed=opts.seed,
    )
    batches = _site_batches(fit_cells, bundle, rbc_px, opts.site_views, opts.seed)
    return _activations(bottom, batches, opts.site_views, len(fit_cells), opts.cache, key, "site cells")


def _flat(acts: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(views, N, ...) -> every view a sample, with its label."""
    return acts.reshape(-1, *acts.shape[2:]), np.tile(y, acts.shape[0])


def fine_tune(src: ModelSource, bundle, fit_cells, rbc_px: float | None, opts: FitOptions) -> FineTuned:
    """The run's model fine-tuned above its split layer on `fit_cells` (edge.site_cells.SiteCells, cut
    for `bundle` at `rbc_px`) and replayed training cells."""
    import keras

    spec = bundle.preprocess_spec
    started = time.perf_counter()
    labels = src.labels
    layer = split_layer(src)
    bottom, top = split_model(src.model, layer)
    sample = replay_sample(src, labels, opts.replay_per_class, opts.seed)
    replay, y_replay = _replay_activations((bottom, layer), src, spec, sample, opts)
    site = _site_activations((bottom, layer), src, bundle, fit_cells, rbc_px, opts)
    x_site, y_site = _flat(site, fit_cells.y)
    x_replay, y_replay = _flat(replay, y_replay)
    weight = opts.site_share / (1 - opts.site_share) * len(x_replay) / len(x_site)
    x = np.concatenate([x_site, x_replay])
    y = np.concatenate([y_site, y_replay])
    w = np.concatenate([np.full(len(x_site), weight), np.ones(len(x_replay))]).astype(np.float32)
    trainable = set_trainable(top, head_only=False, freeze_bn=True)
    lr = float(find_key(src.info.get("run_config") or {}, ("fine_tune_lr",)) or 1e-4) * LR_FACTOR
    keras.utils.set_random_seed(opts.seed)
    top.compile(
        optimizer=keras.optimizers.Adam(lr), loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"]
    )
    log.info(
        f"fine-tuning {trainable} layers above {layer or 'the input'} on {len(fit_cells)} site cells "
        f"({opts.site_views} views, weight {weight:.2f}) and {len(sample)} replayed training cells "
        f"({opts.replay_views} views): {opts.epochs} epochs, lr {lr:g}"
    )
    sampler = make_sampler(x[None], keras.utils.to_categorical(y, len(labels)), BATCH, opts.seed, w)
    history = top.fit(sampler, epochs=opts.epochs, verbose=2)
    record = {
        "method": "layers above the split layer fine-tuned (BatchNorm frozen) on the site's fit cells "
        "and replayed training cells; weighted cross-entropy, Adam",
        "split_layer": layer,
        "trainable_layers": trainable,
        "epochs": opts.epochs,
        "learning_rate": lr,
        "batch_size": BATCH,
        "site": {"cells": len(fit_cells), "views": opts.site_views, "weight": round(weight, 4)},
        "replay": {
            "per_class": opts.replay_per_class,
            "cells": len(y_replay) // opts.replay_views,
            "views": opts.replay_views,
            "sources": [str(r) for r in sample.roots],
            "fingerprint": sample.fingerprint(),
        },
        "site_share_of_loss": opts.site_share,
        "augment": "physical_view (scale, centre, stain, optics)" if spec.version == 2 else "seed",
        "colour": "the bundle's white balance to one white reference (preprocessing), no other transfer",
        "loss": [round(float(v), 4) for v in history.history["loss"]],
        "accuracy": [round(float(v), 4) for v in history.history["accuracy"]],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return FineTuned(src.model, record)
