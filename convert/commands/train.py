"""`edge train`: transfer learning from class folders into RUN_DIR (needs the 'train' extra)."""

from __future__ import annotations

import click

from convert.commands._extras import require_train
from edge.commands._options import class_map_option, seed_option, verbose_option, weights_option

# Options that a --config file can supply; an option given on the command line wins.
_CONFIGURABLE = (
    "arch",
    "class_map",
    "val_dir",
    "val_fraction",
    "weights",
    "img_size",
    "epochs",
    "fine_tune_epochs",
    "batch_size",
    "loss",
    "class_weight",
    "augment",
    "color",
    "views",
    "fine_tune_from",
    "lr",
    "fine_tune_lr",
    "patience",
    "seed",
    "folds",
    "cache",
    "dedupe",
    "max_per_class",
    "preprocess_version",
    "field_rbc",
    "scales",
)


def _scale(text: str) -> tuple[str, float]:
    source, sep, px = text.rpartition("=")
    try:
        if sep and source and float(px) > 0:
            return source, float(px)
    except ValueError:
        pass
    raise click.BadParameter(f"{text!r}: expected SOURCE=PIXELS, e.g. ../data/pbc-8class/train=72.5")


@click.command()
@click.argument(
    "data_dirs", nargs=-1, type=click.Path(file_okay=False, path_type=str), metavar="[DATA_DIR]..."
)
@click.option(
    "--data",
    "extra_data",
    multiple=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Another training source (<class>/<image> folders); repeat for several labs or microscopes.",
)
@class_map_option("Class folder alias across sources, e.g. seg_neutrophil=neutrophil (repeatable).")
@click.option(
    "--arch",
    type=click.Choice(["mobilenetv2", "efficientnetb0", "efficientnet-lite0"]),
    default="mobilenetv2",
    show_default=True,
    help="Backbone: keras.applications MobileNetV2 or EfficientNetB0, or EfficientNet-Lite0 (offline port).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=str),
    help="RUN_DIR for model.keras, config.json, report.json and plots (required unless --config).",
)
@click.option(
    "--val-dir",
    multiple=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Validation folder with the same class subfolders (repeat for several sources). Without it, "
    "--val-fraction is split off.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Stratified validation share of DATA_DIR.",
)
@weights_option("imagenet, none, or a file: torchvision .pth, .npz from `edge weights import`, Keras .h5.")
@click.option("--img-size", type=int, default=224, show_default=True, help="Model input side in pixels.")
@click.option(
    "--epochs",
    type=int,
    default=40,
    show_default=True,
    help="Phase 1: head on the frozen backbone (early stopping may end it sooner).",
)
@click.option(
    "--fine-tune-epochs",
    type=int,
    default=None,
    help="Phase 2: top of the backbone unfrozen at --fine-tune-lr. Default: as --epochs, at most 15.",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--loss", type=click.Choice(["ce", "focal"]), default="ce", show_default=True)
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option(
    "--augment",
    type=click.Choice(["seed", "stain", "none"]),
    default="seed",
    show_default=True,
    help="Training split only. seed: seed 000's augmentations. stain: its geometry plus stain, lamp, "
    "camera, focus, magnification and JPEG changes before colour standardisation and CLAHE (for a "
    "model that must work on other microscopes).",
)
@click.option(
    "--color",
    type=click.Choice(["none", "white_balance"]),
    default="none",
    show_default=True,
    help="Colour standardisation in the preprocessing (training and device): white_balance moves each "
    "image's background to a reference colour measured on the training images.",
)
@click.option(
    "--preprocess-version",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    callback=lambda ctx, param, value: int(value),
    help="2: bit-exact on every CPU (a Raspberry Pi computes what the host did), background and CLAHE "
    "at the model's size, and with --field-rbc each cell cut at its microscope's scale.",
)
@click.option(
    "--field-rbc",
    type=float,
    default=None,
    help="Version 2: the model input spans this many red-cell diameters (4 is about 30 um); each source's "
    "scale is measured from its red cells (docs/differential.md).",
)
@click.option(
    "--scale",
    "scales",
    multiple=True,
    metavar="SOURCE=PX",
    callback=lambda ctx, param, value: dict(_scale(v) for v in value),
    help="A source's red-cell diameter in pixels, instead of measuring it (repeatable).",
)
@click.option(
    "--views",
    type=int,
    default=6,
    show_default=True,
    help="Views per training image computed once (1 original + augmented ones).",
)
@click.option(
    "--fine-tune-from",
    default="auto",
    show_default=True,
    help="Layer whose output starts the fine-tuned part (auto: block_12_add / block5c_add; 'input' = all).",
)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Phase 1 learning rate (Adam).")
@click.option(
    "--fine-tune-lr", type=float, default=1e-4, show_default=True, help="Phase 2 learning rate (Adam)."
)
@click.option(
    "--patience", type=int, default=5, show_default=True, help="Early-stopping patience on val loss."
)
@seed_option()
@click.option("--folds", type=int, default=0, help="K-fold cross-validation on DATA_DIR; reports mean ± std.")
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for preprocessed images and activations (reused by later runs).",
)
@click.option(
    "--dedupe", is_flag=True, help="Drop training images that are near-duplicates of validation images."
)
@click.option("--max-per-class", type=int, default=0, help="Use at most N images per class (quick runs).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=str),
    help="Rerun from RUN_DIR/config.json; options given here override it.",
)
@verbose_option()
@click.pass_context
def train(ctx, data_dirs, extra_data, out, config_path, verbose, **options):
    """Train a classifier from DATA_DIR/<class>/<image> folders (one or more sources) into RUN_DIR.

    Byte-identical files found in several sources are counted once; the same bytes under two labels
    are dropped; both are reported. Each source is recorded with its fingerprint and class counts.

    \b
    Examples:
      edge train data/train --val-dir data/val --arch mobilenetv2 --weights imagenet \\
                 --out runs/mnv2 --cache runs/cache
      edge train --data pbc-8class/train --data blood-5class/train --map seg_neutrophil=neutrophil \\
                 --val-dir pbc-8class/val --val-dir blood-5class/val --augment stain \\
                 --color white_balance --out runs/differential
    """
    require_train("edge train", verbose)
    from convert.pipeline import load_config, run
    from convert.train import TrainConfig

    data_dir = [*data_dirs, *extra_data]
    values = {}
    if config_path:
        values = load_config(config_path)
        for name in _CONFIGURABLE:
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                values[name] = options[name]
        values["data_dir"] = data_dir or values.get("data_dir")
        values["out"] = out or values.get("out")
    else:
        values = {"data_dir": data_dir, "out": out, **options}
    if not values.get("data_dir"):
        raise click.UsageError("DATA_DIR is required (or --config RUN_DIR/config.json)")
    if not values.get("out"):
        raise click.UsageError("--out RUN_DIR is required")
    run(TrainConfig.from_dict(values, config_path or "train options"))
