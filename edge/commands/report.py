"""`edge report`: one slide's report as HTML (and PDF), and as an HL7 FHIR bundle (see docs/report.md)."""

from __future__ import annotations

from pathlib import Path

import click


def _http_url(ctx, param, value):
    """An http(s) URL, checked before the report is built (a FhirUrlError: one line, exit 2)."""
    if value is not None:
        from edge.lab.fhir_post import check_url

        check_url(value)
    return value


@click.command()
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The results database."
)
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
@click.option(
    "--archive",
    type=click.Path(file_okay=False, path_type=Path),
    help="Flagged-image archive [default: the session's, or flagged/ beside the database].",
)
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
    from edge.lab.report import render_html, write_pdf
    from edge.lab.slide import load_slide, pick_session

    if not (out or pdf or fhir or fhir_url):
        raise click.UsageError("nothing to write: give --out, --pdf, --fhir or --fhir-url")
    session = pick_session(db, session)
    slide = load_slide(db, session, archive)
    html = render_html(slide, gallery)
    state = "signed by " + slide.sign.name if slide.sign.signed else "not signed (preliminary)"
    if out:
        out.write_text(html, encoding="utf-8")
        click.echo(f"report: {out} (slide {session}, {len(slide.cells)} cells, {state})")
    pdf_bytes = None
    if pdf:
        pdf_bytes = write_pdf(html, pdf)
        click.echo(f"pdf: {pdf}")
    if fhir or fhir_url:
        from edge.lab.fhir import build_bundle, bundle_json
        from edge.lab.fhir_post import post_bundle

        body = bundle_json(build_bundle(slide, pdf_bytes))
        status = "final" if slide.sign.signed else "preliminary"
        if fhir:
            fhir.write_text(body + "\n", encoding="utf-8")
            click.echo(f"fhir: {fhir} (Bundle, DiagnosticReport {status})")
        if fhir_url:
            code = post_bundle(
                fhir_url,
                body,
                retries=fhir_retries,
                deadline_s=fhir_deadline,
            )
            click.echo(f"fhir: sent to {fhir_url} (HTTP {code}, transaction-response)")
    return 0
