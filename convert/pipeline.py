"""`edge train` end to end: scan -> split -> preprocess cache -> views -> two-phase fit -> outputs."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert import report as reporting
from convert.augment import raw_spec
from convert.cache import load_images
from convert.data import near_duplicates, perceptual_hashes, stratified_kfold, stratified_split
from convert.features import activation_key, extract_views
from convert.models import DEFAULT_SPLIT, ModelSpec, build_model, split_model
from convert.train import TrainConfig, evaluate, fit_two_phase, pooled_features
from convert.weights import apply_layer_weights, resolve_weights
from edge.dataset import parse_class_map, require_classes, scan_labelled, split_name
from edge.errors import DataError, ImageLoadError
from edge.hashing import fingerprint
from edge.imagefile import load_image, to_bgr8
from edge.preprocess import View, background_rgb, cut
from edge.preprocess_exact import background_bgr
from edge.progress import progress
from edge.scale import measure_files
from edge.splits import per_class_sample

log = logging.getLogger(__name__)


@dataclass
class Built:
    model: object
    bottom: object
    top: object
    split_layer: str | None
    pretrained: bool


def build(cfg: TrainConfig, resolved, n_classes: int) -> Built:
    import keras

    keras.utils.set_random_seed(cfg.seed)
    spec = ModelSpec(cfg.arch, n_classes, int(cfg.img_size), resolved.normalization)
    model = build_model(spec, keras_weights=resolved.keras_weights)
    if resolved.npz_path:
        apply_layer_weights(model, resolved.npz_path)
    split = None
    if resolved.pretrained:
        split = DEFAULT_SPLIT[cfg.arch] if cfg.fine_tune_from == "auto" else cfg.fine_tune_from
        if split == "input":
            split = None
        elif split not in {layer.name for layer in model.layers}:
            adds = [layer.name for layer in model.layers if layer.name.endswith("_add")]
            raise DataError(
                f"--fine-tune-from {split}: no such layer in {cfg.arch}; block boundaries: {', '.join(adds)}"
            )
    bottom, top = split_model(model, split)
    return Built(model, bottom, top, split, resolved.pretrained)


def _limit(folder, n: int, seed: int):
    return folder.subset(per_class_sample(folder.targets, n, seed)) if n > 0 else folder


def _load(folder, cfg, desc, spec=None):
    """Hash, preprocess (cached) and drop unreadable files: returns (folder, images, hashes, skipped)."""
    for path in folder.ignored:
        log.info(f"warning: {path}: not an image file (by suffix), ignored")
    hashes = folder.hashes()
    views = folder.views(cfg.scales) if cfg.spec().field_rbc else None
    cached = load_images(
        folder.files, hashes, spec or cfg.spec(), cfg.cache, desc=f"preprocess {desc}", views=views
    )
    folder = folder.subset(cached.ok)
    if len(np.unique(folder.targets)) < len(folder.labels):
        missing = [n for i, n in enumerate(folder.labels) if i not in set(folder.targets.tolist())]
        raise DataError(f"{folder.split}: no readable images left in class(es) {missing}")
    return folder, cached.images, [hashes[i] for i in cached.ok], cached.skipped


@dataclass
class Raw:
    """Training images before colour standardisation and contrast (`stain` augments these), and
    the white reference measured on them. Version 2 cuts each view from the file itself (`files` at
    `views`), so its scale and centre can be jittered."""

    images: np.ndarray | None
    white_reference: tuple[float, float, float] | None = None
    files: list | None = None
    views: list | None = None

    def subset(self, keep: np.ndarray) -> Raw:
        pick = np.flatnonzero(keep)
        return Raw(
            self.images[keep] if self.images is not None else None,
            self.white_reference,
            None if self.files is None else [self.files[i] for i in pick],
            None if self.views is None else [self.views[i] for i in pick],
        )


def _measure_scales(cfg: TrainConfig, *folders) -> None:
    """Each source root's red-cell diameter (edge.scale), unless --scale gave it; into cfg.scales, so
    config.json and the bundle record what training used."""
    if not cfg.spec().field_rbc:
        return
    for folder in filter(None, folders):
        for root in folder.roots:
            key = str(root)
            given = {str(Path(k)): v for k, v in cfg.scales.items()}
            if str(Path(key)) in given:
                cfg.scales[key] = given[str(Path(key))]
                continue
            found = measure_files([i.path for i in folder.items if Path(i.source) == Path(root)])
            if found is None:
                raise DataError(
                    f"{root}: too few red cells to measure its scale; pass --scale {root}=PIXELS "
                    "(the red-cell diameter in its images)"
                )
            cfg.scales[key] = found.rbc_px
            log.info(
                f"scale of {split_name(root)}: red cells {found.rbc_px:g} px across "
                f"({found.cells} red cells in {found.images} images)"
            )


def _raw_and_reference(cfg: TrainConfig, folder) -> Raw:
    """Load the raw training images when stain augmentation or colour standardisation needs them, and
    fix the white reference (the median background colour of the training images) into cfg.preprocess,
    so config.json, the bundle and the device all use the one value."""
    if cfg.color == "none":  # also when a rerun's config.json had it on and --color none overrides it
        cfg.preprocess = {k: v for k, v in cfg.preprocess.items() if k not in ("color", "white_reference")}
    wants_reference = cfg.color == "white_balance" and not cfg.preprocess.get("white_reference")
    if cfg.augment != "stain" and not wants_reference:
        return Raw(None)
    if cfg.preprocess_version == 2:
        return _raw_v2(cfg, folder, wants_reference)
    _, raw, _, _ = _load(folder, cfg, "train (raw, before colour standardisation)", raw_spec(cfg.spec()))
    if cfg.color == "white_balance":
        reference = cfg.preprocess.get("white_reference")
        if not reference:
            backgrounds = np.stack([background_rgb(img[..., ::-1]) for img in raw])
            reference = [round(float(v), 2) for v in np.median(backgrounds, axis=0)]
            log.info(
                f"colour standardisation: white reference (R, G, B) {reference}, "
                f"the median background of {len(raw)} training images"
            )
        cfg.preprocess = {**cfg.preprocess, "color": "white_balance", "white_reference": list(reference)}
    return Raw(raw if cfg.augment == "stain" else None, cfg.preprocess.get("white_reference"))


def _raw_v2(cfg: TrainConfig, folder, wants_reference: bool) -> Raw:
    """Version 2: the white reference is the median slide colour of the training images' windows, as
    `edge.preprocess` measures it; augmentation cuts its views from the files."""
    views = folder.views(cfg.scales) if cfg.spec().field_rbc else [View()] * len(folder)
    if wants_reference:
        spec = cfg.spec()
        backgrounds = []
        for path, view in progress(list(zip(folder.files, views, strict=True)), desc="white reference"):
            try:
                backgrounds.append(background_bgr(cut(to_bgr8(load_image(path)), spec, view))[::-1])
            except (ImageLoadError, ValueError):
                continue  # named when the images are loaded for good
        reference = [round(float(v), 2) for v in np.median(np.array(backgrounds), axis=0)]
        log.info(
            f"colour standardisation: white reference (R, G, B) {reference}, "
            f"the median slide colour of {len(backgrounds)} training images"
        )
        cfg.preprocess = {**cfg.preprocess, "color": "white_balance", "white_reference": reference}
    return Raw(None, cfg.preprocess.get("white_reference"), folder.files, views)


def _views(built, images, cfg, augment: bool, hashes, resolved, desc, raw: Raw | None = None):
    key = (
        activation_key(
            files=hashes,
            spec=cfg.spec().to_dict(),
            arch=cfg.arch,
            weights=resolved.sha256 or resolved.name,
            split=built.split_layer,
            views=cfg.views if augment else 1,
            augment=augment and cfg.augment,
            seed=cfg.seed,
            **({"scales": cfg.scales} if cfg.scales else {}),
        )
        if built.pretrained
        else None
    )  # random weights differ per run: never reuse their activations
    return extract_views(
        built.bottom,
        images,
        cfg.views,
        augment,
        cfg.seed,
        cache_dir=cfg.cache,
        key=key,
        desc=desc,
        kind=cfg.augment,
        raw=raw,
        spec=cfg.spec(),
    )


def _dedupe_check(train_f, train_img, val_f, val_img, remove: bool):
    pairs = near_duplicates(
        perceptual_hashes(train_img), perceptual_hashes(val_img), train_f.files, val_f.files
    )
    log.info(f"near-duplicates across train/val (pHash distance <= 4 of 64): {len(pairs)}")
    for p in pairs[:10]:
        log.info(f"  {p.train_file} ~ {p.val_file} (distance {p.distance})")
    if len(pairs) > 10:
        log.info(f"  ... and {len(pairs) - 10} more (all listed in report.json)")
    dropped = 0
    if remove and pairs:
        # The validation set stays fixed (comparable between runs); the duplicates leave training.
        bad = {p.train_file for p in pairs}
        keep = np.array([i for i, f in enumerate(train_f.files) if str(f) not in bad], dtype=int)
        dropped = len(train_f) - len(keep)
        train_f, train_img = train_f.subset(keep), train_img[keep]
        log.info(f"--dedupe: removed {dropped} training images that duplicate validation images")
    return train_f, train_img, [p.__dict__ for p in pairs], dropped


def scan_splits(cfg: TrainConfig):
    """(all training-folder images, the --val-dir images or None), scanned before anything slow, so a
    bad folder fails in a second."""
    class_map = parse_class_map(cfg.class_map)
    folder = scan_labelled(cfg.data_dir, class_map=class_map, dedupe=True)
    _report_duplicates(folder, "training")
    folder = _limit(folder, cfg.max_per_class, cfg.seed)
    if not cfg.val_dir:
        return folder, None
    val_folder = scan_labelled(cfg.val_dir, folder.labels, class_map=class_map, dedupe=True)
    _report_duplicates(val_folder, "validation")
    require_classes(val_folder, ", ".join(cfg.val_dir), "its classes do not match the training classes")
    return folder, _limit(val_folder, cfg.max_per_class, cfg.seed)


def _report_duplicates(images, what: str) -> None:
    """Files found twice (byte-identical, across or within sources) are counted once; the same
    bytes under two labels are dropped. Say so, with a few examples."""
    if images.duplicates:
        log.info(f"{what} data: {len(images.duplicates)} byte-identical duplicate file(s) counted once, e.g.")
        for kept, dropped in images.duplicates[:3]:
            log.info(f"  {dropped} = {kept}")
    if images.conflicts:
        log.info(
            f"{what} data: {len(images.conflicts)} file(s) with the same bytes under different labels, dropped:"
        )
        for group in images.conflicts[:5]:
            log.info("  " + " = ".join(group))


def _train_and_val(cfg: TrainConfig, folder, val_folder):
    """The training and validation images: --val-dir's, or a stratified split of the training folder's."""
    if val_folder is not None:
        train_folder = folder
    else:
        tr, va = stratified_split(folder.targets, cfg.val_fraction, cfg.seed)
        train_folder, val_folder = folder.subset(tr), folder.subset(va)
    log.info(
        f"split: train {len(train_folder)}, val {len(val_folder)} ({'--val-dir' if cfg.val_dir else f'stratified {cfg.val_fraction:g}'})"
    )
    return train_folder, val_folder


@dataclass
class Prepared:
    """Both splits read, preprocessed, checked for near-duplicates across them."""

    train: object  # ImageSet
    train_images: np.ndarray
    train_hashes: list[str]
    val: object
    val_images: np.ndarray
    val_hashes: list[str]
    raw: Raw
    data: dict  # what report.json records of the data


def _prepare(cfg: TrainConfig, train_folder, val_folder) -> Prepared:
    raw = _raw_and_reference(cfg, train_folder)
    train_folder, train_img, train_hash, skipped = _load(train_folder, cfg, "train")
    val_folder, val_img, val_hash, skipped_val = _load(val_folder, cfg, "val")
    fp = {"train": train_folder.fingerprint(), "val": val_folder.fingerprint()}
    train_folder, train_img, dups, dropped = _dedupe_check(
        train_folder, train_img, val_folder, val_img, cfg.dedupe
    )
    if dropped:
        keep = np.isin(np.array(train_hash), np.array(train_folder.hashes()))
        raw = raw.subset(keep)
        train_hash = train_folder.hashes()
        fp["train"] = train_folder.fingerprint()
    data = {
        "train_dir": cfg.data_dir,
        "val_dir": cfg.val_dir,
        "sources": {"train": train_folder.sources(), "val": val_folder.sources()},
        "duplicates_counted_once": {"train": len(train_folder.duplicates), "val": len(val_folder.duplicates)},
        "conflicts_dropped": {"train": train_folder.conflicts, "val": val_folder.conflicts},
        "n_train": len(train_folder),
        "n_val": len(val_folder),
        "fingerprint": fp,
        "all_fingerprint": fingerprint([*train_folder.entries(), *val_folder.entries()]),
        "skipped": [list(s) for s in skipped + skipped_val],
        "near_duplicates": dups,
        "dedupe_removed": dropped,
    }
    return Prepared(train_folder, train_img, train_hash, val_folder, val_img, val_hash, raw, data)


def run(cfg: TrainConfig) -> dict:
    """Train per `cfg` and write RUN_DIR; returns the report dict."""
    started = time.perf_counter()
    folder, val_folder = scan_splits(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = folder.labels
    log.info(
        f"data: {' + '.join(cfg.data_dir)}: {len(folder)} images in {len(labels)} classes {folder.counts()}"
    )
    resolved = resolve_weights(cfg.arch, cfg.weights, int(cfg.img_size))
    log.info(
        f"weights: {resolved.name}" + (f" (sha256 {resolved.sha256[:16]}...)" if resolved.sha256 else "")
    )
    _measure_scales(cfg, folder, val_folder)
    if cfg.folds:
        return _run_folds(cfg, folder, resolved, started)
    d = _prepare(cfg, *_train_and_val(cfg, folder, val_folder))
    built = build(cfg, resolved, len(labels))
    augment = cfg.augment != "none"
    train_views = _views(built, d.train_images, cfg, augment, d.train_hashes, resolved, "train views", d.raw)
    val_views = _views(built, d.val_images, cfg, False, d.val_hashes, resolved, "val views")
    fit = fit_two_phase(cfg, built, train_views, d.train.targets, val_views, d.val.targets, len(labels))
    # Saved before the (long) evaluations: a run killed while measuring keeps the model it trained.
    fit.model.save(out / "model.keras")
    results = {
        "train": evaluate(fit.top, train_views[0], d.train.targets, labels, cfg.loss, "evaluate train"),
        # The complete model on the images: checks that model.keras is the model we measured.
        "val": evaluate(
            fit.model, d.val_images, d.val.targets, labels, cfg.loss, "evaluate val (complete model)"
        ),
    }
    wall = time.perf_counter() - started
    return reporting.write_run(
        out, cfg, labels, resolved, built.split_layer, d.data, results, fit.history, fit.best_epochs, wall
    )


def _run_folds(cfg: TrainConfig, folder, resolved, started) -> dict:
    """Stratified k-fold on DATA_DIR: views are computed once for all images, each fold trains afresh."""
    raw = _raw_and_reference(cfg, folder)
    folder, images, hashes, skipped = _load(folder, cfg, "all")
    fp = folder.fingerprint()
    labels = folder.labels
    built = build(cfg, resolved, len(labels))
    views = _views(built, images, cfg, cfg.augment != "none", hashes, resolved, "views (all folds)", raw)
    # The pretrained frozen backbone is the same at the start of every fold: pool its features once.
    pooled = pooled_features(built, views) if built.pretrained and cfg.epochs > 0 else None
    folds = []
    for k, (tr, va) in enumerate(stratified_kfold(folder.targets, cfg.folds, cfg.seed)):
        log.info(f"\n=== fold {k + 1}/{cfg.folds}: train {len(tr)}, val {len(va)} ===")
        fresh = build(cfg, resolved, len(labels)) if k else built
        fold_pooled = (pooled[:, tr], pooled[0, va]) if pooled is not None else None
        fit = fit_two_phase(
            cfg,
            fresh,
            views[:, tr],
            folder.targets[tr],
            views[:1, va],
            folder.targets[va],
            len(labels),
            fold_pooled,
        )
        report = evaluate(
            fit.top, views[0, va], folder.targets[va], labels, cfg.loss, f"evaluate fold {k + 1}"
        )
        log.info(f"fold {k + 1}: accuracy {report['accuracy'] * 100:.2f}%  macro-F1 {report['macro_f1']:.4f}")
        folds.append({"fold": k + 1, "val": report, "history": fit.history, "best_epochs": fit.best_epochs})
    wall = time.perf_counter() - started
    data = {
        "train_dir": cfg.data_dir,
        "sources": {"all": folder.sources()},
        "n": len(folder),
        "fingerprint": {"all": fp},
        "all_fingerprint": fp,
        "skipped": [list(s) for s in skipped],
    }
    return reporting.write_folds(Path(cfg.out), cfg, labels, resolved, built.split_layer, data, folds, wall)


def load_config(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read config ({exc})") from None
    return data.get("train", data)
