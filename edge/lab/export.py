"""Reviewed cells as class folders: OUT/<verified label>/<slide>_<frame>_<crop>.jpg, the layout every
folder-reading command takes (edge.dataset.scan_labelled), so `edge adapt` can calibrate a site's
bundle on the site's own corrections.

Only cells a technician decided are taken, one by one: a review faster than a look at the cell
(edge/results/verification.py MIN_REVIEW_S) decides nothing, and its cell is left out, as a held Enter
would otherwise teach a site's bundle whatever the model said.

A cell's crop is the one the daemon archived when it flagged the cell (edge.daemon.archive.crop_stem).
The review queue holds flagged cells only, so a reviewed cell normally has one; it lacks one when the
archive was paused (low disk) or off. Those cells, and cells reviewed as 'unknown' (no class), are not
exported, and are listed in OUT/reviews.csv with the reason, next to every exported one. The CSV is
safe to open in a spreadsheet: no field starts a formula.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edge.catalogue import UNKNOWN
from edge.lab.slide import Cell, SlideError, iso, load_slide
from edge.progress import progress
from edge.results.reviews import Review, ReviewBook
from edge.results.verification import MIN_REVIEW_S

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# A spreadsheet reads a field starting with one of these as a formula (=HYPERLINK(...), +cmd|...).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_name(text: str) -> str:
    """`text` as a file or folder name: itself when it is one already (letters, digits, . _ -, not
    starting with a dot), otherwise its safe characters and a hash of the whole, so that two different
    texts never get one name."""
    if text and not text.startswith(".") and not _UNSAFE.search(text):
        return text
    cleaned = _UNSAFE.sub("_", text).strip("._") or "_"
    return f"{cleaned}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def spreadsheet_safe(value):
    """A CSV field a spreadsheet shows as text: one starting like a formula gets a leading quote."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


@dataclass
class ExportSummary:
    out: Path
    exported: dict[str, int] = field(default_factory=dict)  # label -> cells
    no_crop: int = 0
    unknown: int = 0
    too_fast: int = 0  # reviewed only faster than a look at the cell: not decided, not exported
    sessions: list[str] = field(default_factory=list)
    unsigned: list[str] = field(default_factory=list)  # sessions left out because not signed

    def describe(self) -> str:
        total = sum(self.exported.values())
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.exported.items())) or "none"
        lines = [
            f"exported {total} reviewed cells from {len(self.sessions)} slide(s) to {self.out}: {classes}"
        ]
        if self.no_crop or self.unknown or self.too_fast:
            lines.append(
                f"  not exported: {self.no_crop} without an archived crop, {self.unknown} reviewed as unknown, "
                f"{self.too_fast} decided too fast (under {MIN_REVIEW_S:g} s on screen)"
            )
        if self.unsigned:
            lines.append(
                f"  skipped {len(self.unsigned)} unsigned slide(s) (--unsigned takes them): {', '.join(self.unsigned[:5])}"
            )
        lines.append(f"  list: {self.out / 'reviews.csv'}")
        return "\n".join(lines)


CSV_COLUMNS = [
    "file",
    "status",
    "session_id",
    "result_id",
    "frame_id",
    "crop_index",
    "model_label",
    "model_confidence",
    "verified_label",
    "reviewer",
    "reviewed_at",
    "review_seconds",
]


def export_reviews(
    db: str | Path,
    out: str | Path,
    sessions: list[str] | None = None,
    signed_only: bool = True,
    archive: Path | None = None,
) -> ExportSummary:
    db, out = Path(db), Path(out)
    book = ReviewBook.existing(db)
    try:
        known = book.session_ids()
        states = {sid: book.sign_state(sid) for sid in known}
    finally:
        book.close()
    missing = sorted(set(sessions or []) - set(known))
    if missing:
        raise SlideError(f"{db}: no session {', '.join(missing)}")
    summary = ExportSummary(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sid in sessions or known:
        if signed_only and not states[sid].signed:
            summary.unsigned.append(sid)
            continue
        summary.sessions.append(sid)
        looked_at = [c for c in load_slide(db, sid, archive).cells if c.review or c.hasty]
        for c in progress(looked_at, desc=f"exporting {sid}", unit="cell", note=False, leave=False):
            if c.review:
                rows.append(_export_cell(c, sid, out, summary))
            else:  # listed, not exported: a hasty press teaches `edge adapt` nothing
                rows.append(_row(c, sid, c.hasty, "too_fast"))
                summary.too_fast += 1
    with open(out / "reviews.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return summary


def _export_cell(cell: Cell, sid: str, out: Path, summary: ExportSummary) -> dict:
    """Copy one reviewed cell's crop into OUT/<verified label>/ (when it has a class and a crop);
    its row of reviews.csv."""
    label = cell.review.label
    target = ""
    if label == UNKNOWN:
        status = "unknown"
        summary.unknown += 1
    elif cell.crop is None:
        status = "no_crop"
        summary.no_crop += 1
    else:
        folder = out / safe_name(label)
        folder.mkdir(exist_ok=True)
        dest = folder / f"{safe_name(sid)}_{cell.frame_id:07d}_{cell.crop_index}.jpg"
        shutil.copyfile(cell.crop, dest)
        target = str(dest.relative_to(out))
        status = "exported"
        summary.exported[label] = summary.exported.get(label, 0) + 1
    return _row(cell, sid, cell.review, status, target)


def _row(cell: Cell, sid: str, review: Review, status: str, target: str = "") -> dict:
    """A cell's row of reviews.csv: `review` is its decision, or the too-fast review that was not one."""
    return {
        "file": target,
        "status": status,
        "session_id": sid,
        "result_id": cell.id,
        "frame_id": cell.frame_id,
        "crop_index": cell.crop_index,
        "model_label": cell.label,
        "model_confidence": round(cell.confidence, 4),
        "verified_label": "" if review.too_fast else review.label,
        "reviewer": review.reviewer,
        "reviewed_at": iso(review.ts),
        "review_seconds": review.seconds,
    }
