"""Decode and preprocess each image once, through edge.preprocess, into a cached uint8 array.

The cache key is the preprocess spec plus the content hash of every file, so a changed file or
spec never reuses stale arrays. Corrupt or unreadable images are named, skipped and counted
(edge.dataset.load_array).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.dataset import load_array
from edge.preprocess import PreprocessSpec
from edge.progress import progress


@dataclass
class CachedImages:
    """images[i] (uint8 RGB, spec.size square) is files[ok[i]]; skipped lists (file, reason)."""

    images: np.ndarray
    ok: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False


def cache_key(spec: PreprocessSpec, hashes: list[str], views=None) -> str:
    parts = {"spec": spec.to_dict(), "files": hashes}
    if views is not None and any(v.rbc_px for v in views):  # version 2 at a scale: part of the input
        parts["rbc_px"] = [v.rbc_px for v in views]
    payload = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


def load_images(
    files: list[Path],
    hashes: list[str],
    spec: PreprocessSpec,
    cache_dir: str | os.PathLike | None = None,
    desc: str = "preprocess",
    workers: int = 2,
    views=None,
) -> CachedImages:
    """Preprocess `files` (each at its `views` entry, edge.preprocess.View) or read them from
    `cache_dir` into one uint8 array."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"images-{cache_key(spec, hashes, views)}"
        if path.with_suffix(".npy").exists() and path.with_suffix(".json").exists():
            meta = json.loads(path.with_suffix(".json").read_text())
            images = np.load(path.with_suffix(".npy"))
            return CachedImages(
                images, np.array(meta["ok"], dtype=np.int64), [tuple(s) for s in meta["skipped"]], True
            )
    with progress(total=len(files), desc=desc) as bar:
        loaded = load_array(files, spec, workers, bar.update, views)
    result = CachedImages(loaded.images, loaded.ok, loaded.skipped)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, result.images)
        os.replace(tmp, path.with_suffix(".npy"))
        path.with_suffix(".json").write_text(
            json.dumps({"ok": result.ok.tolist(), "skipped": result.skipped, "spec": spec.to_dict()})
        )
    return result
