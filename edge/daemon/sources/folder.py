"""`folder:DIR`: a hot folder for microscopes that save images.

Each new file is processed once. The database is the memory: at start (`resume`) the source reads
every file name this folder already has a frame row for (classified or skipped as corrupt), and the
result row and its frame row are committed together, so a restart neither skips nor double-counts a
file.
"""

from __future__ import annotations

import time
from pathlib import Path

from edge.daemon.config import ConfigError
from edge.daemon.sources import CorruptFrame, Frame, FrameSource, SourceError
from edge.image_files import images_in, printable
from edge.preprocess import load_image, to_bgr8


class Source(FrameSource):
    kind = "folder"
    live = False  # never drop a file: the pipeline waits instead

    def __init__(self, target, config, done_refs: set[str] | None = None, stop_event=None, **_):
        super().__init__(target, config)
        if not target:
            raise ConfigError("source.uri: folder needs a directory (folder:DIR)")
        self.path = Path(target).resolve()
        self.target = str(self.path)
        self.options = config.folder
        self.done = set(done_refs or ())  # names already in the database, plus those queued this run
        # name -> "size:mtime_ns" of files recorded corrupt: taken again once they change (a writer
        # that paused longer than settle_s, a file copied again)
        self.corrupt: dict[str, str] = {}
        self.stop_event = stop_event
        self._pending: list[tuple[str, Path]] = []
        self._seen_stat: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, first seen stable)

    def resume(self, store) -> None:
        """What the database says was taken already: classified files, and corrupt ones as they were
        (taken again once they change)."""
        corrupt = store.corrupt_refs(self.name)
        self.corrupt.update(corrupt)
        self.done |= store.done_refs(self.name) - set(corrupt)

    def open(self) -> None:
        if not self.path.is_dir():
            raise SourceError(f"{self.path}: hot folder does not exist (yet)")

    def _scan(self) -> list[tuple[str, Path]]:
        now = time.monotonic()
        ready = []
        for p in images_in(self.path, recursive=self.options.recursive):
            # The name as stored and printed: lossless for any bytes (edge.image_files.printable)
            name = printable(p.relative_to(self.path))
            if name in self.done:
                continue
            try:
                st = p.stat()
            except OSError:
                continue  # vanished between listing and stat
            key = (st.st_size, st.st_mtime_ns)
            if self.corrupt.get(name) == _stat_text(key):
                continue  # still the file that failed: wait until it changes
            seen = self._seen_stat.get(name)
            if seen is None or seen[:2] != key:
                self._seen_stat[name] = (*key, now)
            elif now - seen[2] >= self.options.settle_s:
                ready.append((st.st_mtime_ns, name, p))
        return [
            (name, p) for _, name, p in sorted(ready)
        ]  # oldest first: the order the microscope saved them

    def read(self) -> Frame | None:
        while not self._pending:
            self.heartbeat = time.monotonic()
            if self.stop_event is not None and self.stop_event.is_set():
                return None
            if not self.path.is_dir():
                raise SourceError(f"{self.path}: hot folder disappeared")
            self._pending = self._scan()
            if not self._pending:
                time.sleep(self.options.poll_s)
        name, path = self._pending.pop(0)
        seen = self._seen_stat.pop(name, None)
        stat = _stat_text(seen[:2]) if seen else ""
        try:
            image = to_bgr8(load_image(path))
        except Exception as exc:  # any failure of one file is that file's record, never the daemon's end
            self.corrupt[name] = stat
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {str(exc)[:200]}"
            raise CorruptFrame(name, reason, stat) from None
        self.corrupt.pop(name, None)
        self.done.add(name)
        return Frame(image=image, ref=name, file_stat=stat)


def _stat_text(key) -> str:
    return f"{key[0]}:{key[1]}"
