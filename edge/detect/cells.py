"""`edge detect`'s work on one field image: the detector's boxes, a crop around each by the detector
bundle's crop rule, the white cells' crops classified in one batch, and the record of it all."""

from __future__ import annotations

from edge.detect.crop import crop_cell


def image_record(path, image, detections, predictions, crops, timings) -> dict:
    """What --json prints for one image: its size and every cell, box in the image's own pixels."""
    cells = []
    preds = iter(predictions)
    for det, square in zip(detections, crops, strict=True):
        cell = {"box": list(det.int_box()), "score": round(det.score, 4), "kind": det.kind}
        if det.kind == "wbc":
            p = next(preds)
            cell.update(
                label=p.label,
                confidence=round(p.confidence, 4),
                uncertain=p.uncertain,
                reason=p.reason,
                top_k=[[n, round(v, 4)] for n, v in p.top_k],
                crop=list(square),
            )
        cells.append(cell)
    return {
        "path": str(path),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "cells": cells,
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }


def find_cells(path, image, detector, classifier, threshold: float | None = None) -> dict:
    """The record of one BGR image: every detection, and a prediction for each white cell."""
    detections, timings = detector.detect(image, threshold=threshold)
    timings = {f"detect_{k}": v for k, v in timings.items()}
    crops = [crop_cell(image, d.box, detector.spec.crop) for d in detections]
    white = [c for c, d in zip(crops, detections, strict=True) if d.kind == "wbc"]
    predictions = []
    if white:
        predictions, stages = classifier.classify_images([c[0] for c in white])
        timings.update({f"classify_{k}": v for k, v in stages.items()})
    return image_record(path, image, detections, predictions, [c[1] for c in crops], timings)
