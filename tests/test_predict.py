"""edge.predict.to_prediction: the one place scores become a label and the uncertain flag."""

from __future__ import annotations

import numpy as np
import pytest

from edge.bundle import Uncertainty
from edge.predict import UNKNOWN, to_prediction

LABELS = ["a", "b", "c"]
RULE = Uncertainty(min_confidence=0.6, min_margin=0.2)


@pytest.mark.parametrize(
    ("probs", "label", "reason", "margin"),
    [
        ([0.05, 0.8, 0.15], "b", None, 0.65),  # confident, clear margin: nobody needs to look
        ([0.5, 0.3, 0.2], "a", "low confidence", 0.2),  # top score under min_confidence
        ([0.7, 0.55, 0.0], "a", "small margin", 0.15),  # confident, but the runner-up is close
        ([0.61, 0.0, 0.39], "a", None, 0.22),  # just over both limits
        ([0.59, 0.41, 0.0], "a", "low confidence", 0.18),  # both: low confidence is the reason given
    ],
)
def test_the_uncertain_flag_and_its_reason(probs, label, reason, margin):
    pred = to_prediction(np.array(probs, np.float32), LABELS, RULE, top_k=2)
    assert pred.label == label
    assert pred.reason == reason and pred.uncertain == (reason is not None)
    assert pred.margin == pytest.approx(margin, abs=1e-6)
    assert [name for name, _ in pred.top_k] == [LABELS[i] for i in np.argsort(probs)[::-1][:2]]


def test_a_rejected_cell_is_unknown_but_keeps_its_best_classes():
    pred = to_prediction(np.array([0.1, 0.9, 0.0]), LABELS, RULE, 3, 5.0, 4.0)
    assert pred.label == UNKNOWN and pred.reason == UNKNOWN and pred.uncertain
    assert pred.top_k[0][0] == "b" and pred.rejection_score == 5.0
    assert to_prediction(np.array([0.1, 0.9, 0.0]), LABELS, RULE, 3, 3.0, 4.0).label == "b"
