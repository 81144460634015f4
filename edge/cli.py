"""The `edge` command line. Sub-commands live in edge/commands/, imported only when used, so
`edge --help` stays fast and never touches TensorFlow."""

from __future__ import annotations

import importlib
import os
import sys

import click

from edge import __version__
from edge.errors import EdgeError

# command name -> "module:function". Training-side commands import convert/calibration lazily.
COMMANDS = {
    "info": "edge.commands.info:info",
    "train": "edge.commands.train:train",
    "train-detector": "edge.commands.train_detector:train_detector",
    "weights": "edge.commands.weights:weights",
    "quantize": "edge.commands.quantize:quantize",
    "compile": "edge.commands.compile:compile_",
    "export": "edge.commands.export:export",
    "classify": "edge.commands.classify:classify",
    "detect": "edge.commands.detect:detect",
    "eval-detector": "edge.commands.eval_detector:eval_detector",
    "eval": "edge.commands.eval:eval_",
    "adapt": "edge.commands.adapt:adapt",
    "run": "edge.commands.run:run",
    "bench": "edge.commands.bench:bench",
    "doctor": "edge.commands.doctor:doctor",
    "sign": "edge.commands.sign:sign",
    "review": "edge.commands.review:review",
    "report": "edge.commands.report:report",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug):
    """Blood-cell classification on the microscope.

    \b
    Device:   classify, eval, detect, eval-detector, run, bench, doctor, info, sign
    Lab:      review (export), report (HTML, PDF, FHIR)
    Training: train, train-detector, weights, quantize, compile, export  (need the 'train' extra)
    """


def _debug_requested(argv) -> bool:
    return "--debug" in argv or os.environ.get("EDGE_DEBUG") == "1"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if (
        "run" in argv[:2]
    ):  # before anything slow: a stop during start-up is a clean stop (daemon/early_signals.py)
        from edge.daemon import early_signals

        early_signals.catch()
    debug = _debug_requested(argv)
    try:
        rv = cli.main(args=argv, prog_name="edge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgeError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
