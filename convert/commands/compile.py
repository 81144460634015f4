"""`edge compile`: Edge TPU pre-flight of a bundle's int8 model, then Coral's compiler when present."""

from __future__ import annotations

from pathlib import Path

import click

from convert.commands._extras import require_train
from edge.commands._options import verbose_option


@click.command()
@click.argument(
    "bundle_dir", metavar="BUNDLE_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--preflight",
    "preflight_only",
    is_flag=True,
    help="Only check the model against the Edge TPU's documented requirements; change nothing.",
)
@click.option(
    "--compiler",
    default="edgetpu_compiler",
    show_default=True,
    help="The Edge TPU compiler executable (x86-64 Debian, from Coral's apt repository).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.IntRange(min=10),
    default=180,
    show_default=True,
    help="Seconds the compiler may take.",
)
@verbose_option("List every op that cannot map, with its reasons.", "-v")
def compile_(bundle_dir, preflight_only, compiler, timeout_s, verbose):
    """Check a bundle's int8 model for the Coral Edge TPU and compile it into model_edgetpu.tflite.

    \b
    Exit codes: 0 ok; 6 edgetpu_compiler not found (the pre-flight verdict is printed);
    7 the compiler failed; 8 --preflight found ops that would run on the CPU.
    """
    require_train("edge compile")
    from convert.edgetpu import preflight
    from convert.edgetpu_compiler import INSTALL_HINT, CompilerMissingError, compile_bundle, find_compiler
    from edge.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    report = preflight(bundle.model_bytes())
    click.echo("\n".join(report.table()))
    if verbose:
        for v in report.unsupported():
            click.echo(f"  op {v.index} {v.op} (v{v.version}): {'; '.join(v.reasons)}")
    click.echo(report.verdict())
    if preflight_only:
        if not report.fully_mappable:
            raise click.exceptions.Exit(8)
        return
    found = find_compiler(compiler)
    if found is None:
        raise CompilerMissingError(f"{compiler} not found: {INSTALL_HINT}; {report.verdict()}")
    log = compile_bundle(bundle, found, report.to_dict(), timeout_s)
    click.echo(
        f"compiled: {bundle.path / 'model_edgetpu.tflite'}  {log.get('ops_on_edgetpu', '?')} of "
        f"{log.get('ops_total', '?')} ops on the Edge TPU, {log.get('subgraphs', '?')} subgraph(s), "
        f"on-chip {log.get('on_chip_memory_used', '?')}, off-chip {log.get('off_chip_memory_used', '?')}"
    )
