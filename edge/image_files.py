"""Which image files a folder holds: the one folder scanner.

Everything that looks for images in a folder comes here (`edge classify`, `eval`, `adapt`, `train`,
`quantize`, `eval-detector --centred`, and `edge run`'s replay and hot-folder sources), so all of
them see the same files:

- hidden files and folders (a name starting with ".") are skipped; only IMAGE_SUFFIXES count;
- a symbolic link is followed only while it stays inside the folder given, and each real file is
  taken once (a link to `.` or `..` can neither loop nor count an image twice);
- the order is sorted by name, a folder's files before its sub-folders'.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def inside(path: str, root: str) -> bool:
    """Whether the real path `path` is `root` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _entries(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:  # unreadable or vanished: nothing in it, as os.walk has it
        return []


def files_in(folder: str | os.PathLike, within: str | os.PathLike | None = None, recursive: bool = True):
    """Visible files under `folder` (recursively unless told not to), sorted; links followed only
    inside `within` (default: `folder` itself); each real file once."""
    root = os.path.realpath(within or folder)
    found: list[Path] = []
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    stack = [os.fspath(folder)]
    while stack:
        current = stack.pop()
        real_dir = os.path.realpath(current)
        if real_dir in seen_dirs or not inside(real_dir, root):
            continue
        seen_dirs.add(real_dir)
        subdirs = []
        for entry in _entries(current):
            # Only a link needs its target resolved: a plain entry's real path is its folder's plus its name.
            target = (
                os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_dir, entry.name)
            )
            if entry.is_dir():
                subdirs.append(entry.path)
            elif target not in seen_files and inside(target, root) and entry.is_file():
                seen_files.add(target)
                found.append(Path(entry.path))
        if recursive:
            stack.extend(reversed(subdirs))
    return found


def images_in(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under `folder` by the rules above."""
    return [p for p in files_in(folder, recursive=recursive) if is_image_name(p.name)]


def subfolders(root: str | os.PathLike) -> list[Path]:
    """The visible folders directly in `root`, sorted; a link out of `root` is not one of them."""
    root = Path(root)
    real = os.path.realpath(root)
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and inside(os.path.realpath(p), real)
    )


def expand_paths(paths: Iterable) -> list[Path]:
    """Files and folders -> image files, in the order given, each real file once.

    A file named directly is kept whatever its suffix, and so is a path that does not exist: the
    loader then reports it by name ("file not found", "not a decodable image") like any bad image.
    """
    out: list[Path] = []
    seen: set = set()
    for raw in paths:
        path = Path(raw)
        for item in images_in(path) if path.is_dir() else [path]:
            key = os.path.realpath(item) if item.exists() else item
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def printable(path: str | os.PathLike) -> str:
    """A file name as text that can always be printed, stored and read back: bytes that are not
    UTF-8 (a name from another system, b"Zelle_\\xe4.jpg") become \\xNN escapes, and a backslash
    itself becomes two, so two different names never print alike."""
    raw = os.fsencode(path)
    if b"\\" not in raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
