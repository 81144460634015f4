"""Content hashes: one sha256 of a file, and one fingerprint of a labelled dataset.

Bundles record the sha256 of every model file; training, calibration, evaluation and site
adaptation record the fingerprint of the images they used, all with these two functions, so two
fingerprints of the same images are always comparable.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

FINGERPRINT_METHOD = "sha256 over sorted '<label>/<path relative to the class folder>\\t<file sha256>' lines"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(entries: Iterable[tuple[str, str, str]]) -> str:
    """(label, relative path, file sha256) triples -> one sha256 that changes with any file, name or label."""
    lines = sorted(f"{label}/{rel}\t{sha}" for label, rel, sha in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
