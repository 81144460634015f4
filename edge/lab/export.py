"""Reviewed cells as class folders: OUT/<verified label>/<slide>_<frame>_<crop>.jpg, the layout every
folder-reading command takes (edge.dataset.scan_labelled), so `edge adapt` can calibrate a site's
bundle on the site's own corrections.

A cell's crop is the one the daemon archived when it flagged the cell (edge.daemon.archive.crop_stem).
The review queue holds flagged cells only, so a reviewed cell normally has one; it lacks one when the
archive was paused (low disk) or off. Those cells, and cells reviewed as 'unknown' (no class), are not
exported, and are listed in OUT/reviews.csv with the reason, next to every exported one.
"""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edge.catalogue import UNKNOWN
from edge.lab.slide import Cell, SlideError, iso, load_slide
from edge.progress import progress
from edge.results.reviews import ReviewBook

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "_"


@dataclass
class ExportSummary:
    out: Path
    exported: dict[str, int] = field(default_factory=dict)  # label -> cells
    no_crop: int = 0
    unknown: int = 0
    sessions: list[str] = field(default_factory=list)
    unsigned: list[str] = field(default_factory=list)  # sessions left out because not signed

    def describe(self) -> str:
        total = sum(self.exported.values())
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.exported.items())) or "none"
        lines = [
            f"exported {total} reviewed cells from {len(self.sessions)} slide(s) to {self.out}: {classes}"
        ]
        if self.no_crop or self.unknown:
            lines.append(
                f"  not exported: {self.no_crop} without an archived crop, {self.unknown} reviewed as unknown"
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
        reviewed = [c for c in load_slide(db, sid, archive).cells if c.review]
        bar = progress(reviewed, desc=f"exporting {sid}", unit="cell", note=False, leave=False)
        rows += [_export_cell(c, sid, out, summary) for c in bar]
    with open(out / "reviews.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
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
    return {
        "file": target,
        "status": status,
        "session_id": sid,
        "result_id": cell.id,
        "frame_id": cell.frame_id,
        "crop_index": cell.crop_index,
        "model_label": cell.label,
        "model_confidence": round(cell.confidence, 4),
        "verified_label": label,
        "reviewer": cell.review.reviewer,
        "reviewed_at": iso(cell.review.ts),
    }
