"""Options several commands (the device's and the training host's plugins) declare alike, declared
once: the help text is the only thing a command says of its own."""

from __future__ import annotations

from pathlib import Path

import click


def class_map_option(help_text: str = "Class folder alias, e.g. Neutrophil_band=neutrophil (repeatable)."):
    """--map FOLDER=LABEL (repeatable), passed on as `class_map`, a tuple of strings."""
    return click.option("--map", "class_map", multiple=True, metavar="FOLDER=LABEL", help=help_text)


def seed_option(help_text: str | None = None):
    """--seed N (default 0)."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help_text)


def out_dir_option(help_text: str):
    """--out DIR (required), passed on as `out_dir`, a Path."""
    return click.option(
        "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help=help_text
    )


def cache_option(help_text: str):
    """--cache DIR, passed on as `cache` (None when not given)."""
    return click.option(
        "--cache", type=click.Path(file_okay=False, path_type=Path), default=None, help=help_text
    )


def verbose_option(help_text: str = "Also show TensorFlow's own log.", *short: str):
    """--verbose (and any `short` spelling, e.g. "-v"), a flag."""
    return click.option("--verbose", *short, is_flag=True, help=help_text)


def top_k_option(func):
    """--top-k N: how many labels a prediction lists (edge classify, edge detect)."""
    kind = click.IntRange(1, 100)
    return click.option("--top-k", type=kind, default=3, show_default=True, help="How many labels to list.")(
        func
    )


def detector_threshold_option(help_text: str):
    """--threshold: the detector score a box needs (None: the detector bundle's operating threshold)."""
    return click.option(
        "--threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=None, help=help_text
    )


def crop_fraction_option(default: float | None, help_text: str):
    """--crop-fraction: the crop rule's cell fraction, a white cell's side over its crop's side."""
    kind = click.FloatRange(0.05, 1.0)
    return click.option(
        "--crop-fraction", type=kind, default=default, show_default=default is not None, help=help_text
    )


def plot_file_option(help_text: str):
    """--plot FILE.png, passed on as `plot_path`."""
    return click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), help=help_text)


def json_flag(help_text: str):
    """--json, a flag, passed on as `as_json`."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def weights_option(help_text: str):
    """--weights NAME|FILE (default imagenet)."""
    return click.option("--weights", default="imagenet", show_default=True, help=help_text)


def results_db_option(func):
    """--db FILE (required): the results database (edge report, edge review serve / export)."""
    kind = click.Path(dir_okay=False, path_type=Path)
    return click.option("--db", type=kind, required=True, help="The results database.")(func)


def archive_option(
    help_text: str = "Flagged-image archive [default: each session's, or flagged/ beside the database].",
):
    """--archive DIR: where the flagged cells' crops are (None: the session's own, as results.db says)."""
    return click.option("--archive", type=click.Path(file_okay=False, path_type=Path), help=help_text)


def token_file_option(help_text: str):
    """--token-file FILE: the page's token (edge run, edge review serve; edge/commands/run.py reads it)."""
    return click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), help=help_text)


def frames_options(what: str):
    """--frames DIR --labels CSV: whole fields with one labelled white cell each (edge.site_cells), instead
    of `what` (a folder of single-cell images), and --detector that finds the cell."""

    def decorate(func):
        func = click.option(
            "--detector",
            type=click.Path(file_okay=False, path_type=str),
            default=None,
            help="With --frames: the white-cell detector bundle (default: the daemon's).",
        )(func)
        func = click.option(
            "--labels",
            "labels_csv",
            type=click.Path(dir_okay=False, path_type=str),
            help="With --frames: a CSV 'frame,label' (frame: the image's name without its suffix).",
        )(func)
        return click.option(
            "--frames",
            "frames_dir",
            type=click.Path(file_okay=False, path_type=str),
            help=f"Whole microscope fields instead of {what}: each has one labelled white cell (--labels), "
            "found by the detector and cut as `edge run --mode field` cuts it; the fields' red cells give "
            "the scale.",
        )(func)

    return decorate
