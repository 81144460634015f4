"""The `edge` command line. The device's sub-commands live in edge/commands/; other packages add
theirs as plugins (the training host's: pyproject.toml, entry points "edge.commands"). A command's
module is imported only when it runs or its --help is asked, so `edge --help` stays fast and imports
neither TensorFlow nor the training side."""

from __future__ import annotations

import os
import sys


def _catch_early_signals(argv: list[str]) -> None:
    """`edge run`: SIGTERM and SIGINT are noted from here on, so a stop while the rest loads is a clean
    stop (daemon/early_signals.py). First thing of all, before click or any command is imported."""
    if "run" in argv[:2]:
        from edge.daemon import early_signals

        early_signals.catch()


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "edge":  # the program, not an import
    _catch_early_signals(sys.argv[1:])

import ast  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
from importlib.metadata import entry_points  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from edge import __version__  # noqa: E402
from edge.errors import EdgeError  # noqa: E402

# command name -> "module:function", edge's own.
COMMANDS = {
    "info": "edge.commands.info:info",
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


# The entry-point group where installed packages register more commands, as "module:function".
PLUGINS = "edge.commands"


@functools.cache
def plugins() -> dict[str, str]:
    """command name -> "module:function" of the commands other packages register (after frigate's
    plugin per backend). Read from the installed metadata: nothing is imported. A name edge already
    has stays edge's."""
    return {
        ep.name: f"{ep.module}:{ep.attr}" for ep in entry_points(group=PLUGINS) if ep.name not in COMMANDS
    }


def _find_spec(name: str, path):
    for finder in sys.meta_path:
        spec = getattr(finder, "find_spec", lambda *_: None)(name, path)
        if spec is not None:
            return spec
    return None


def _docstring(target: str) -> str | None:
    """The docstring of "module:function", read from the module's source file without running the
    module or its packages' __init__ (the finders only locate files). None when that fails."""
    module_name, _, attr = target.partition(":")
    parts, path, spec = module_name.split("."), None, None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        spec = getattr(sys.modules.get(name), "__spec__", None) or _find_spec(name, path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            return ast.get_docstring(node)
    return None


class LazyGroup(click.Group):
    def targets(self) -> dict[str, str]:
        return {**COMMANDS, **plugins()}

    def list_commands(self, ctx):
        return list(self.targets())

    def get_command(self, ctx, name):
        target = self.targets().get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def help_line(self, ctx, name: str, limit: int) -> str:
        """The command's line in `edge --help`, as click makes it from the docstring, read from the
        source; a command whose docstring cannot be read that way is imported instead."""
        doc = _docstring(self.targets()[name])
        if doc is not None:
            return click.Command(name, help=doc).get_short_help_str(limit)
        try:
            return self.get_command(ctx, name).get_short_help_str(limit)
        except Exception as exc:  # a broken plugin must not take `edge --help` down with it
            return f"(cannot be loaded: {type(exc).__name__}: {exc})"

    def format_commands(self, ctx, formatter):
        """click's list of commands, without importing any of them."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        with formatter.section("Commands"):
            formatter.write_dl([(name, self.help_line(ctx, name, limit)) for name in names])


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """Blood-cell classification on the microscope.

    \b
    Device:   classify, eval, adapt, detect, eval-detector, run, bench, doctor, info, sign
    Lab:      review (serve, export), report (HTML, PDF, FHIR)
    Training: train, train-detector, weights, quantize, compile, export  (need the 'train' extra)
    """
    setup_logging(ctx.invoked_subcommand, debug or os.environ.get("EDGE_DEBUG") == "1")


# The packages whose modules log (each with logging.getLogger(__name__)); the handler is set up here only.
LOGGED_PACKAGES = ("edge", "convert", "calibration")


class ConsoleHandler(logging.Handler):
    """Log records as the terminal has always shown them: the message alone, INFO (the progress of
    long host-side work) on stdout and WARNING and above on stderr; `edge run` puts everything on
    stderr behind a time stamp, as a daemon's log. The stream is looked up at each record, so a
    redirected sys.stdout (a pipe, a test) gets what follows."""

    def __init__(self, daemon: bool = False):
        super().__init__()
        self.daemon = daemon
        self.setFormatter(
            logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
            if daemon
            else logging.Formatter("%(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if self.daemon or record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a failing handler never stops the program
            self.handleError(record)


def setup_logging(command: str | None, debug: bool = False) -> None:
    """The one place logging is set up, before any sub-command runs. Safe to call again (tests run the
    CLI many times in one process): the handler is replaced, never added twice."""
    handler = ConsoleHandler(daemon=command == "run")
    for name in LOGGED_PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.propagate = False  # a library's root configuration must not print our lines twice


def _debug_requested(argv) -> bool:
    return "--debug" in argv or os.environ.get("EDGE_DEBUG") == "1"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    _catch_early_signals(argv)  # again: main() may be called with its own argv
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
