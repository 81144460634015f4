"""A slide written the way the daemon writes one, for the review, report and FHIR tests: a real
results.db through edge.results.store.ResultStore and flagged crops through FlaggedArchive (synthetic
cells drawn by edge.synthetic), without running a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.daemon.archive import FlaggedArchive
from edge.daemon.config import DaemonConfig, load_config, without_secrets
from edge.results.store import ResultRow, ResultStore
from edge.synthetic import CLASSES, render_cell

# The reference model's labels (models/mobilenetv2-int8).
LABELS = ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]


def write_slide(
    db: Path,
    session: str,
    cells: list[tuple[str, float, bool]],
    labels: list[str] = LABELS,
    config: DaemonConfig | None = None,
) -> Path:
    """One frame per (label, confidence, uncertain) cell in `session` of `db`; the flagged ones
    (uncertain, an alert class) archived as the daemon would. Returns the archive root. Unless a
    `config` says otherwise, the slide counts unsure cells at their top label (count_uncertain), so
    the review tests' figures hold the cells a technician reclassifies."""
    config = config or load_config(
        overrides={
            "store": {"db": str(db)},
            "http": {"listen": "off"},
            "differential": {"count_uncertain": True},
        }
    )
    store = ResultStore(db)
    store.start_session(session, "ab" * 32, "models/mobilenetv2-int8", "sim", "cell", without_secrets(config))
    archive = FlaggedArchive(config.archive, config.archive_dir, session)
    archive.config.min_free_mb = 0  # tests run on whatever disk there is
    rng = np.random.default_rng(len(cells))
    first = store.next_frame_id()
    for i, (label, confidence, uncertain) in enumerate(cells):
        rest = (1 - confidence) / (len(labels) - 1)
        probs = {name: (confidence if name == label else rest) for name in labels}
        frame_id = first + i
        store.write_frame(
            frame_id,
            1.8e9 + frame_id,
            "sim",
            f"sim:{label}",
            [ResultRow(0, (0, 0, 64, 64), label, confidence, probs, uncertain, {})],
        )
        if archive.reason(label, uncertain):
            crop = render_cell(CLASSES[i % len(CLASSES)], rng, size=96)
            archive.save(
                crop, {"frame_id": frame_id, "crop_index": 0, "label": label, "confidence": confidence}
            )
    store.close()
    return config.archive_dir
