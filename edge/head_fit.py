"""The fit behind `edge adapt`: the last layer re-fitted on a site's embeddings, held near the
bundle's own weights by an L2 pull whose strength k-fold cross-validation chooses (edge/adapt.py
says why only that layer)."""

from __future__ import annotations

import numpy as np

from edge.splits import stratified_folds

STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)  # L2 pull towards the bundle's weights, chosen by cross-validation


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_head(
    x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, strength: float, steps: int = 1500
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced cross-entropy on (x, y) + strength/2 * |(W, b) - (W0, b0)|^2, by Adam on the
    full batch (a few hundred cells x 129 weights a class: milliseconds)."""
    x = np.asarray(x, np.float64)
    counts = np.bincount(y, minlength=len(w0)).astype(np.float64)
    weight = 1.0 / counts[y]
    weight /= weight.sum()
    params = [w0.astype(np.float64).copy(), b0.astype(np.float64).copy()]
    anchors = [w0.astype(np.float64), b0.astype(np.float64)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    # Embeddings are ReLU outputs of a few units; a step of 1 % of their typical size moves logits gently.
    lr = 0.01 / max(float(np.abs(x).mean()), 1e-3)
    for t in range(1, steps + 1):
        g = _softmax(x @ params[0].T + params[1])
        g[np.arange(len(y)), y] -= 1.0
        g *= weight[:, None]
        grads = [g.T @ x, g.sum(axis=0)]
        for k in range(2):
            grads[k] = grads[k] + strength * (params[k] - anchors[k])
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
            params[k] -= lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
    return params[0], params[1]


def choose_strength(x, y, w0, b0, seed: int, strengths=STRENGTHS) -> tuple[float, dict]:
    """The pull whose fit predicts the left-out fold best (k-fold, k = min(5, smallest class));
    ties go to the stronger pull, which changes the bundle least."""
    k = int(min(5, np.bincount(y)[np.unique(y)].min()))
    if k < 2:
        return strengths[-1], {}
    folds = stratified_folds(y, k, seed)
    scores = {}
    for s in strengths:
        right = 0
        for held in folds:
            fit = np.setdiff1d(np.arange(len(y)), held)
            w, b = fit_head(x[fit], y[fit], w0, b0, s, steps=600)
            right += int(((x[held] @ w.T + b).argmax(1) == y[held]).sum())
        scores[s] = right / len(y)
    best = max(scores.values())
    return max(s for s in strengths if scores[s] == best), {f"{s:g}": round(v, 4) for s, v in scores.items()}
