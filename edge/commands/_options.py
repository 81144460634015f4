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


def verbose_option(help_text: str = "Also show TensorFlow's own log."):
    return click.option("--verbose", is_flag=True, help=help_text)
