"""The one stratified split: every class shuffled on its own by one seeded generator, then cut.

`edge train` (train/val and k-fold), `edge adapt` (fit/held back, and the folds that choose the L2
pull) and the per-class caps (`--max-per-class`, scripts/split_site.py) all draw here, so the same
seed gives the same cells wherever it is used. Indices are returned sorted.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def class_permutations(targets: np.ndarray, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(class, its indices in a random order) for every class present, in class order."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    for c in np.unique(targets):
        yield int(c), rng.permutation(np.flatnonzero(targets == c))


def stratified_split(
    targets: np.ndarray, fraction: float, seed: int, min_rest: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held) indices: per class, round(fraction x its size) held (at least one when fraction > 0)
    and at least `min_rest` left; a class of `min_rest` cells or fewer is held whole."""
    rest, held = [], []
    for _, members in class_permutations(targets, seed):
        if len(members) <= min_rest:
            held += members.tolist()
            continue
        n_held = int(round(fraction * len(members)))
        if fraction > 0:
            n_held = min(max(n_held, 1), len(members) - min_rest)
        held += members[:n_held].tolist()
        rest += members[n_held:].tolist()
    return np.array(sorted(rest), int), np.array(sorted(held), int)


def stratified_folds(targets: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k folds of indices, each class dealt over them in turn, each class starting where the one
    before stopped (so the folds' sizes differ by one at most); empty folds are left out."""
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for _, members in class_permutations(targets, seed):
        for j, i in enumerate(members):
            folds[(j + offset) % k].append(int(i))
        offset += len(members)
    return [np.array(sorted(f), int) for f in folds if f]


def per_class_sample(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most `n` indices of each class (all of a smaller class), sorted."""
    chosen = [members[:n] for _, members in class_permutations(targets, seed)]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], int)
