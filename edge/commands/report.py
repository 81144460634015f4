"""`edge report`: one slide's report as HTML (and PDF), and as an HL7 FHIR bundle (see docs/report.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge.commands._options import archive_option, results_db_option
from edge.progress import progress
from edge.wording import plural


def _http_url(ctx, param, value):
    """An http(s) URL, checked before the report is built (a FhirUrlError: one line, exit 2)."""
    if value is not None:
        from edge.lab.fhir_post import check_url

        check_url(value)
    return value


@click.command()
@results_db_option
@click.option("--session", help="Slide / session id [default: the database's only session].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as HTML here.")
@click.option("--pdf", type=click.Path(dir_okay=False, path_type=Path), help="Also write it as PDF.")
@click.option(
    "--fhir", type=click.Path(dir_okay=False, path_type=Path), help="Write an HL7 FHIR R4 Bundle (JSON)."
)
@click.option(
    "--fhir-url", callback=_http_url, help="POST the FHIR Bundle (a transaction) to this server base URL."
)
@click.option(
    "--fhir-retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries of the POST."
)
@click.option(
    "--fhir-deadline",
    type=click.FloatRange(min=1, max=3600),
    default=60,
    show_default=True,
    help="Seconds the delivery may take in all, retries included.",
)
@archive_option("Flagged-image archive [default: the session's, or flagged/ beside the database].")
@click.option(
    "--gallery", type=click.IntRange(min=0), default=60, show_default=True, help="Flagged cells shown."
)
def report(db, session, out, pdf, fhir, fhir_url, fhir_retries, fhir_deadline, archive, gallery):
    """Report one slide: times, model and its sha256, the differential (model and verified counts,
    each with its 95 % interval), alerts, uncertain and unknown cells, flagged cells from the
    archive, and who signed it.

    \b
    Examples:
      edge report --db results.db --session SLIDE-042 --out report.html --pdf report.pdf
      edge report --db results.db --session SLIDE-042 --fhir report.json --fhir-url http://lis.local/fhir
    """
    from edge.lab.report import render_html
    from edge.lab.slide import load_slide, pick_session

    if not (out or pdf or fhir or fhir_url):
        raise click.UsageError("nothing to write: give --out, --pdf, --fhir or --fhir-url")
    session = pick_session(db, session)
    # a big session takes seconds (reading its cells, the PDF): one bar over the steps, on a terminal
    steps = 2 + bool(pdf) + bool(fhir or fhir_url)
    with progress(total=steps, desc=f"report {session}", unit="step", note=False, leave=False) as bar:
        bar.set_postfix_str("reading the slide")
        slide = load_slide(db, session, archive)
        bar.update()
        bar.set_postfix_str("HTML")
        html = render_html(slide, gallery)
        bar.update()
        _write(slide, session, html, out, pdf, fhir, fhir_url, (fhir_retries, fhir_deadline), bar)
    return 0


def _write(slide, session, html, out, pdf, fhir, fhir_url, delivery, bar) -> None:
    """Write what was asked for, a line for each (printed above the bar, which stays below them).
    `delivery`: the POST's retries and its deadline in seconds."""
    from edge.lab.report import write_pdf

    say = lambda line, err=False: bar.write(line, file=sys.stderr if err else sys.stdout)  # noqa: E731
    state = "signed by " + slide.sign.name if slide.sign.signed else "not signed (preliminary)"
    if out:
        out.write_text(html, encoding="utf-8")
        say(f"report: {out} (slide {session}, {plural(len(slide.cells), 'cell')}, {state})")
    pdf_bytes = None
    if pdf:
        bar.set_postfix_str("PDF")
        pdf_bytes = write_pdf(html, pdf)
        bar.update()
        say(f"pdf: {pdf}")
    if fhir or fhir_url:
        from edge.lab.fhir import build_bundle, bundle_json
        from edge.lab.fhir_post import post_bundle

        bar.set_postfix_str("FHIR")
        body = bundle_json(build_bundle(slide, pdf_bytes))
        status = "final" if slide.sign.signed else "preliminary"
        if fhir:
            fhir.write_text(body + "\n", encoding="utf-8")
            say(f"fhir: {fhir} (Bundle, DiagnosticReport {status})")
        if fhir_url:
            code = post_bundle(fhir_url, body, retries=delivery[0], deadline_s=delivery[1])
            say(f"fhir: sent to {fhir_url} (HTTP {code}, transaction-response)")
        bar.update()
