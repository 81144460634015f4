"""The flagged-image archive: cells a human should look at, saved as JPEG + sidecar JSON.

Flagged: uncertain predictions, and any prediction of a configured alert class (myeloblast...).
A disk-space guard pauses archiving, never classification, when free space drops below
`min_free_mb`, and resumes above it; the state shows on the page, in /api/status and /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.daemon.config import ArchiveConfig

log = logging.getLogger(__name__)

DISK_CHECK_EVERY_S = 5.0
# In a session's folder: its images and the database agree (written at a clean stop, or once the
# start-up check has repaired a killed session), so later starts need not read the folder again.
CHECKED = "checked.txt"


@dataclass
class ArchiveState:
    state: str  # active | paused_low_disk | disabled | error
    free_mb: float
    saved: int
    skipped_low_disk: int
    errors: int
    dir: str


def _atomic_write(path: Path, data: bytes) -> None:
    # A reader (the page) never sees half a JPEG, and a crash leaves no truncated file behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp makes 0600; the group (technicians added to edge-run) may read the archive.
        os.fchmod(fd, 0o640)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def crop_stem(frame_id: int, crop_index: int, label: str) -> str:
    """The file name (without suffix) of a flagged cell: how a results row finds its crop again."""
    return f"{frame_id:07d}_{crop_index}_{label}"


@dataclass
class Repair:
    """What the start-up check found in one session's archive, and did about it."""

    temp_removed: int = 0  # half-written files of a process that was killed
    halves_removed: int = 0  # a JPEG without its JSON or a JSON without its JPEG
    not_recorded: int = 0  # whole pairs whose row never committed: moved to not-recorded/
    missing: int = 0  # committed flagged rows without an image (archive paused, full or off)

    def message(self, session: str = "") -> str | None:
        if not (self.temp_removed or self.halves_removed or self.not_recorded or self.missing):
            return None
        return (
            f"archive check{f' of session {session}' if session else ''}: {self.temp_removed} temporary and {self.halves_removed} incomplete file(s) removed, "
            f"{self.not_recorded} image(s) of cells never recorded moved to not-recorded/, "
            f"{self.missing} flagged cell(s) recorded without an image"
        )


class FlaggedArchive:
    def __init__(self, config: ArchiveConfig, root: Path, session_id: str, max_recent: int = 12):
        self.config = config
        self.root = Path(root)
        self.session_dir = self.root / session_id
        self.alert_classes = set(config.alert_classes)
        self.recent: deque[dict] = deque(maxlen=max_recent)
        self.saved = self.skipped_low_disk = self.errors = 0
        self.free_mb = float("nan")
        self._checked_at = 0.0
        self.paused = False
        self.last_error = ""
        if config.enabled:
            self.session_dir.mkdir(parents=True, exist_ok=True)
            self._check_disk(force=True)

    def reason(self, label: str, uncertain: bool) -> str | None:
        """Why this prediction is flagged, or None."""
        if label in self.alert_classes:
            return "alert_class"
        if uncertain and self.config.uncertain:
            return "uncertain"
        return None

    def _check_disk(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < DISK_CHECK_EVERY_S:
            return
        self._checked_at = now
        self.free_mb = shutil.disk_usage(self.root).free / 1e6
        was = self.paused
        self.paused = self.free_mb < self.config.min_free_mb
        if self.paused != was:
            verb = "paused" if self.paused else "resumed"
            log.log(
                logging.WARNING if self.paused else logging.INFO,
                f"archive {verb}: {self.free_mb:.0f} MB free on {self.root} (threshold {self.config.min_free_mb:.0f} MB)",
            )

    def unchecked_sessions(self) -> list[str]:
        """The other session folders under the root that no clean stop or earlier check has marked:
        those of killed runs (and, once, those of a version before the mark). One listing of the root
        and one stat per session, so a start stays quick however many sessions the archive holds."""
        try:
            with os.scandir(self.root) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        return sorted(
            n for n in names if n != self.session_dir.name and not (self.root / n / CHECKED).exists()
        )

    def mark_checked(self, session_id: str | None = None) -> None:
        """The session's folder agrees with the database (a clean stop, or repaired)."""
        folder = self.root / session_id if session_id else self.session_dir
        try:
            (folder / CHECKED).write_text(
                "edge run: the images here agree with the database (a clean stop, or repaired at a start)\n"
            )
        except OSError:
            pass  # a full or read-only disk: the next start checks this folder again, no harm done

    def reopen(self) -> None:
        """This session is being written again (a resumed slide): a kill may now leave it out of step."""
        (self.session_dir / CHECKED).unlink(missing_ok=True)

    def repair(self, recorded: set[tuple[int, int]], session_id: str | None = None) -> Repair:
        """Make a session's archive (this one's, or `session_id`'s) agree with the database after a
        crash. The image is written before its row commits, so a kill can leave temporary files, half
        a pair, or a pair whose row never committed; `recorded` is (frame_id, crop_index) of every
        flagged row of that session committed."""
        folder = self.root / session_id if session_id else self.session_dir
        found = Repair()
        if not folder.is_dir():
            found.missing = len(recorded)
            return found
        pairs: dict[str, set[str]] = {}
        for path in folder.iterdir():
            if not path.is_file():
                continue
            if path.name.startswith("."):  # _atomic_write's temporary name
                path.unlink(missing_ok=True)
                found.temp_removed += 1
            elif path.suffix in (".jpg", ".json"):
                pairs.setdefault(path.stem, set()).add(path.suffix)
        kept: set[tuple[int, int]] = set()
        for stem, suffixes in pairs.items():
            if suffixes != {".jpg", ".json"}:
                for suffix in suffixes:
                    (folder / f"{stem}{suffix}").unlink(missing_ok=True)
                found.halves_removed += len(suffixes)
                continue
            frame, crop, *_ = stem.split("_") + ["", ""]
            key = (int(frame), int(crop)) if frame.isdigit() and crop.isdigit() else None
            if key in recorded:
                kept.add(key)
                continue
            aside = folder / "not-recorded"
            aside.mkdir(exist_ok=True)
            for suffix in suffixes:
                os.replace(folder / f"{stem}{suffix}", aside / f"{stem}{suffix}")
            found.not_recorded += 1
        found.missing = len(recorded - kept)
        return found

    def encode(self, crop: np.ndarray) -> bytes:
        """The crop as the archive stores it (OSError when OpenCV cannot encode it)."""
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(self.config.jpeg_quality)])
        if not ok:
            raise OSError("JPEG encoding failed")
        return jpeg.tobytes()

    def save(self, crop: np.ndarray | bytes, meta: dict) -> str | None:
        """Save a flagged crop (an image, or its JPEG from `encode`); returns the file name, or None
        when archiving is paused or off."""
        if not self.config.enabled:
            return None
        self._check_disk()
        if self.paused:
            self.skipped_low_disk += 1
            return None
        stem = crop_stem(meta["frame_id"], meta["crop_index"], meta["label"])
        try:
            jpeg = crop if isinstance(crop, bytes) else self.encode(crop)
            _atomic_write(self.session_dir / f"{stem}.jpg", jpeg)
            _atomic_write(self.session_dir / f"{stem}.json", (json.dumps(meta, indent=2) + "\n").encode())
        except OSError as exc:  # a full or read-only disk must not stop classification
            self.errors += 1
            self.last_error = str(exc)
            return None
        self.saved += 1
        self.last_error = ""
        self.recent.appendleft({**meta, "image": f"{self.session_dir.name}/{stem}.jpg"})
        return f"{stem}.jpg"

    def state(self) -> ArchiveState:
        if not self.config.enabled:
            name = "disabled"
        elif self.paused:
            name = "paused_low_disk"
        elif self.errors and self.last_error:
            name = "error"
        else:
            name = "active"
        return ArchiveState(
            name, round(self.free_mb, 1), self.saved, self.skipped_low_disk, self.errors, str(self.root)
        )
