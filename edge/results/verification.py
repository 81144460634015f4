"""What "verified" and "reviewed" mean: one definition, used by the live page, /api/status, the review
page, the end-of-run summary, MQTT, the report and FHIR.

- A cell is **decided** when a technician gave it a label (the model's, confirmed, or another one)
  after looking at it for at least MIN_REVIEW_S. A faster decision is recorded, with its time, but
  marked too fast: it decides nothing, and the cell still waits for a look.
- **Verified**, per label: the cells a technician decided to be of that label. Before any review,
  nothing is verified; it is never the model's count.
- **Reviewed N of M**: N of the M cells in the review queue (alert classes, unknown, uncertain:
  edge.results.reviews.needs_look) are decided. A slide is signed only when N is M.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

# The shortest look that counts as a review. Seeing a cell and pressing a key takes a person about
# 0.5-0.8 s at the very least (choice reaction to a picture), and a technician reading a blood cell
# takes 1.5-3 s; a held key repeats every 30-50 ms after a 250-600 ms delay. 1.0 s lies between the
# two: a held Enter never reaches it, a person who looked at the cell always does.
MIN_REVIEW_S = 1.0

NAME_MAX = 80  # a reviewer's or signer's name
REASON_MAX = 200  # why a slide was re-opened


def too_fast(seconds: float | None) -> bool:
    """A decision taken in `seconds` (None: not timed, e.g. recorded before decisions were timed)."""
    return seconds is not None and seconds < MIN_REVIEW_S


def clean_text(text, what: str, limit: int) -> str:
    """A name or a reason as it is recorded: a string, its whitespace runs made one space, not blank,
    printable (no control or direction-changing characters), at most `limit` characters. ValueError
    (one line naming `what`) otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected a string, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"{what}: required, and not blank")
    if len(text) > limit:
        raise ValueError(f"{what}: at most {limit} characters, got {len(text)}")
    if not text.isprintable():
        raise ValueError(f"{what}: only printable characters (no control characters)")
    return text


@dataclass(frozen=True)
class Verification:
    """A slide's review as one set of numbers (the module docstring defines them)."""

    verified: dict[str, int] = field(default_factory=dict)  # label -> cells decided to be of it
    reviewed: int = 0  # queued cells decided
    queued: int = 0  # cells in the review queue
    too_fast: int = 0  # queued cells whose every decision was too fast (still waiting for a look)

    @classmethod
    def of(cls, cells: Iterable) -> Verification:
        """From a slide's cells (edge.results.reviews.QueuedCell: `reason`, the decision `review`, and
        `hasty`, a later decision that was too fast); cells outside the queue count when decided."""
        verified: Counter = Counter()
        reviewed = queued = hasty = 0
        for c in cells:
            if c.review is not None:
                verified[c.review.label] += 1
            if c.reason:
                queued += 1
                reviewed += c.review is not None
                hasty += c.review is None and c.hasty is not None
        return cls(dict(verified), reviewed, queued, hasty)

    @property
    def pending(self) -> int:
        """Queued cells still waiting for a decision."""
        return self.queued - self.reviewed

    @property
    def total(self) -> int:
        return sum(self.verified.values())

    def text(self) -> str:
        """'reviewed 5 of 119 (2 too fast)': how the page, the summary and the report say it."""
        fast = f" ({self.too_fast} too fast, to look at again)" if self.too_fast else ""
        return f"reviewed {self.reviewed} of {self.queued}{fast}"

    def as_dict(self) -> dict:
        return {
            "verified": dict(self.verified),
            "reviewed": self.reviewed,
            "queued": self.queued,
            "pending": self.pending,
            "too_fast": self.too_fast,
            "min_review_s": MIN_REVIEW_S,
        }
