"""The running differential count of a session (a slide), with alert rules.

A rule fires when the cells of its classes reach `min_fraction` of the classified cells, once at
least `min_cells` have been counted (20% blasts among 5 cells is noise, not a finding).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from edge.daemon.config import AlertRule, DifferentialConfig


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95 % for z = 1.96): unlike k/n +- z*se it
    stays inside [0, 1] and is honest for small counts and for 0 or n. (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class AlertState:
    name: str
    classes: list[str]
    fraction: float
    min_fraction: float
    cells: int
    min_cells: int
    active: bool


class DifferentialCount:
    def __init__(self, config: DifferentialConfig, labels: list[str]):
        self.config = config
        self.labels = list(labels)
        self.counts: Counter[str] = Counter()
        self.uncertain = 0
        self._active: set[str] = set()
        # A rule naming a class the model cannot output would silently never fire: say so.
        self.warnings = [
            f"differential alert {rule.name!r}: class {name!r} is not a label of this model ({', '.join(labels)})"
            for rule in config.alerts
            for name in rule.classes
            if name not in labels
        ]

    def restore(self, counts: dict[str, int], uncertain: int) -> None:
        """Carry on a session after a restart, from the counts in the database."""
        self.counts.update(counts)
        self.uncertain += uncertain
        self._active = {a.name for a in self.alerts() if a.active}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, label: str, uncertain: bool) -> list[AlertState]:
        """Count one cell; returns the alerts that became active with it."""
        if uncertain:
            self.uncertain += 1
            if not self.config.count_uncertain:
                return []
        self.counts[label] += 1
        newly = []
        for alert in self.alerts():
            if alert.active and alert.name not in self._active:
                newly.append(alert)
            (self._active.add if alert.active else self._active.discard)(alert.name)
        return newly

    def _evaluate(self, rule: AlertRule) -> AlertState:
        total = self.total
        cells = sum(self.counts[c] for c in rule.classes)
        fraction = cells / total if total else 0.0
        active = total >= rule.min_cells and fraction >= rule.min_fraction
        return AlertState(
            rule.name,
            list(rule.classes),
            round(fraction, 4),
            rule.min_fraction,
            total,
            rule.min_cells,
            active,
        )

    def alerts(self) -> list[AlertState]:
        return [self._evaluate(rule) for rule in self.config.alerts]

    def table(self) -> list[dict]:
        """Every label of the model (zeros included), with count and percentage, most frequent first."""
        total = self.total
        rows = [
            {
                "label": name,
                "count": self.counts[name],
                "percent": round(100 * self.counts[name] / total, 1) if total else 0.0,
            }
            for name in self.labels
        ]
        return sorted(rows, key=lambda r: (-r["count"], r["label"]))
