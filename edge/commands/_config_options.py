"""Command-line options declared by the daemon's config (edge/daemon/config.py): each flag names the
key it sets, and takes its type, bounds, choices, help and default from that key's field. `edge run`
turns the flags given into the table that overrides the config file (`config_overrides`); `edge
bench` and `edge classify` reuse the same declarations with the field's default, so `--mode`,
`--lab`, `--backend`, `--region` ... cannot drift apart between commands."""

from __future__ import annotations

from pathlib import Path

import click

from edge.daemon.config import DaemonConfig
from edge.daemon.section import bounds, choices, locate, number


class ConfigOption(click.Option):
    """A flag that sets `key` ("source.fps") of the daemon's config. `to_table(value)` gives the keys
    it sets in that key's table (default: the key itself), e.g. --mqtt HOST:PORT sets host and port."""

    def __init__(self, param_decls, key: str, to_table=None, **kwargs):
        super().__init__(param_decls, **kwargs)
        self.key, self.to_table = key, to_table


def declared(key: str):
    """(the type, the constraints, the pydantic FieldInfo) of the config's `key`."""
    *parents, leaf = key.split(".")
    tp, metadata = locate(DaemonConfig, key.split("."))
    model = locate(DaemonConfig, parents)[0] if parents else DaemonConfig
    return tp, metadata, model.model_fields[leaf]


def click_type(tp, metadata):
    """click's type for a field: a Choice of a Literal's values, a range of its bounds."""
    if choices(tp):
        return click.Choice(list(choices(tp)))
    if tp in (int, float):
        b = bounds(metadata)
        kind = click.IntRange if tp is int else click.FloatRange
        return kind(
            min=b.get("ge", b.get("gt")),
            max=b.get("le", b.get("lt")),
            min_open="gt" in b,
            max_open="lt" in b,
        )
    return None


def config_option(key: str, *param_decls, declared_default: bool = False, to_table=None, **kwargs):
    """A click option for the config's `key`. By default it is None unless given (the config file and
    the field's default fill in); `declared_default=True` makes the field's default the option's
    (commands without a config file: bench, classify)."""
    tp, metadata, info = declared(key)
    default = info.get_default(call_default_factory=True)
    if tp is bool:
        kwargs.setdefault("is_flag", True)
    elif "type" not in kwargs:
        kwargs["type"] = click_type(tp, metadata)
    help_text = kwargs.pop("help", info.description) or ""
    if declared_default:
        kwargs.setdefault("default", default)
        kwargs.setdefault("show_default", True)
    else:
        kwargs.setdefault("default", None)
        if default not in ("", 0, None) and tp is not bool:
            help_text += f"  [default: {number(default)}]"
    return click.option(*param_decls, cls=ConfigOption, key=key, to_table=to_table, help=help_text, **kwargs)


def config_overrides(command: click.Command, values: dict) -> dict:
    """The config options of `command` that were given (not None; a flag only when set) -> the nested
    table they override: defaults < config file < these."""
    table: dict = {}
    for param in command.params:
        value = values.get(param.name) if isinstance(param, ConfigOption) else None
        if value is None or (param.is_flag and not value):
            continue
        value = str(value) if isinstance(value, Path) else value
        *parents, leaf = param.key.split(".")
        node = table
        for name in parents:
            node = node.setdefault(name, {})
        node.update(param.to_table(value) if param.to_table else {leaf: value})
    return table
