"""Decode and preprocess each image once, through edge.preprocess, into a cached uint8 array.

The cache key is the preprocess spec plus the content hash of every file, so a changed file or
spec never reuses stale arrays. Corrupt or unreadable images are named, skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import ImageLoadError
from edge.preprocess import PreprocessSpec, preprocess_file


@dataclass
class CachedImages:
    """images[i] (uint8 RGB, spec.size square) is files[ok[i]]; skipped lists (file, reason)."""

    images: np.ndarray
    ok: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False


def cache_key(spec: PreprocessSpec, hashes: list[str]) -> str:
    payload = json.dumps({"spec": spec.to_dict(), "files": hashes}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


def _load_one(path: Path, spec: PreprocessSpec):
    try:
        return preprocess_file(path, spec), None
    except ImageLoadError as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, not a crash
        return None, f"{type(exc).__name__}: {exc}"


def load_images(
    files: list[Path],
    hashes: list[str],
    spec: PreprocessSpec,
    cache_dir: str | os.PathLike | None = None,
    desc: str = "preprocess",
    workers: int = 2,
) -> CachedImages:
    """Preprocess `files` (or read them from `cache_dir`) into one uint8 array."""
    from tqdm import tqdm

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"images-{cache_key(spec, hashes)}"
        if (path.with_suffix(".npy")).exists() and (path.with_suffix(".json")).exists():
            meta = json.loads(path.with_suffix(".json").read_text())
            images = np.load(path.with_suffix(".npy"))
            return CachedImages(
                images, np.array(meta["ok"], dtype=np.int64), [tuple(s) for s in meta["skipped"]], True
            )
    size = int(spec.size)
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    good = np.zeros(len(files), dtype=bool)
    skipped = []
    # OpenCV releases the GIL while decoding and resizing, so threads use both cores.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: _load_one(p, spec), files)
        for i, (img, reason) in enumerate(tqdm(results, total=len(files), desc=desc, unit="img")):
            if img is None:
                skipped.append((str(files[i]), reason))
            else:
                images[i] = img
                good[i] = True
    ok = np.flatnonzero(good)
    result = CachedImages(images[ok] if len(ok) < len(files) else images, ok, skipped)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, result.images)
        os.replace(tmp, path.with_suffix(".npy"))
        path.with_suffix(".json").write_text(
            json.dumps({"ok": ok.tolist(), "skipped": skipped, "spec": spec.to_dict()})
        )
    return result
