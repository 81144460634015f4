"""The slide report: one HTML page from a Jinja2 template (templates/report.html.j2), and the same page
as PDF through WeasyPrint. The HTML holds its images (data URIs), so it can be mailed or archived as
one file. No patient identifier is stored anywhere; the slide id is what the lab typed."""

from __future__ import annotations

import base64
import datetime as dt
import socket
from dataclasses import dataclass
from pathlib import Path

import cv2

from edge import __version__
from edge.catalogue import caption
from edge.errors import ImageLoadError, MissingExtraError
from edge.imagefile import load_image
from edge.lab.slide import Cell, Slide
from edge.results.verification import MIN_REVIEW_S

INTENDED_USE = "Screening support for trained staff, not a diagnosis."
THUMB_PX = 112
REASON_TEXT = {"alert_class": "alert class", "unknown": "unknown", "uncertain": "uncertain"}


@dataclass
class GalleryItem:
    cell: Cell
    image: str  # data URI

    @property
    def caption(self) -> str:
        c = self.cell
        decided = c.review.label if c.review else ("decided too fast" if c.hasty else "not reviewed")
        return f"#{c.id} {caption(c.label, c.confidence)} → {decided}"


def when(ts: float | None) -> str:
    """A time as the report prints it: UTC, to the second."""
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def thumbnail(path: Path, side: int = THUMB_PX) -> str | None:
    """A small JPEG of a crop as a data URI (the report carries its images)."""
    try:  # the one decoder, with its limits: an archive folder is given on the command line
        image = load_image(path, cv2.IMREAD_COLOR)
    except ImageLoadError:
        return None
    scale = side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode() if ok else None


def gallery(slide: Slide, limit: int) -> tuple[list[GalleryItem], int]:
    """Up to `limit` flagged cells that have a crop, in review-queue order; and how many have one."""
    with_crop = [c for c in slide.flagged if c.crop is not None]
    items = []
    for cell in with_crop[:limit]:
        uri = thumbnail(cell.crop)
        if uri:
            items.append(GalleryItem(cell, uri))
    return items, len(with_crop)


def _environment():
    try:
        import jinja2
    except ImportError as exc:
        raise MissingExtraError("edge report", "device", exc.name or "jinja2") from None
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edge.lab", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,  # a typo in the template fails the report, never prints blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["pct"] = lambda v: f"{v:.1f}"
    return env


def render_html(slide: Slide, gallery_limit: int = 60, generated: float | None = None) -> str:
    items, flagged_with_crop = gallery(slide, gallery_limit)
    generated = generated or dt.datetime.now(dt.timezone.utc).timestamp()
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            slide=slide,
            rows=slide.rows(),
            alerts=slide.alerts(),
            verification=slide.verification,
            min_review_s=MIN_REVIEW_S,
            gallery=items,
            flagged=len(slide.flagged),
            flagged_with_crop=flagged_with_crop,
            reasons=REASON_TEXT,
            intended_use=INTENDED_USE,
            generated=generated,
            generator=f"edge-hemato {__version__} on {socket.gethostname()}",
        )
    )


def write_pdf(html: str, out: Path) -> bytes:
    """The report's HTML as PDF (WeasyPrint: HTML and CSS to PDF, no browser)."""
    try:
        import weasyprint
    except (
        ImportError,
        OSError,
    ) as exc:  # OSError: the Pango library is missing (apt install libpango-1.0-0)
        raise MissingExtraError(
            "edge report --pdf", "device", getattr(exc, "name", None) or str(exc)
        ) from None
    pdf = weasyprint.HTML(string=html).write_pdf()
    out.write_bytes(pdf)
    return pdf
