"""The running differential count of a session (a slide), with alert rules.

Every cell with a known label is counted in the differential; a rejected cell ("unknown") counts
in no class. A differential is a count of white cells: classes that are not (erythroblasts, platelets,
edge/catalogue.py) are counted and shown per 100 white cells, as labs report nucleated red cells,
but they are not part of the 100 %. An alert rule counts only confident, known white cells: a rule
fires when the confident cells of its classes reach `min_fraction` of all confident white cells, once
at least `min_cells` of them have been counted (100 by default: a standard 100-cell differential; 20 %
blasts among 5 cells is noise, not a finding). Every fraction carries its 95 % Wilson interval.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from edge.catalogue import UNKNOWN
from edge.daemon.config import AlertRule, DifferentialConfig
from edge.results.store import SessionCounts


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95 % for z = 1.96): unlike k/n +- z*se it
    stays inside [0, 1] and is honest for small counts and for 0 or n. (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"a proportion of {k} in {n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class AlertState:
    name: str
    classes: list[str]
    fraction: float  # of confident known cells
    interval: tuple[float, float]  # 95 % Wilson interval of `fraction`
    min_fraction: float
    cells: int  # confident known cells counted
    min_cells: int
    active: bool


@dataclass(frozen=True)
class DifferentialSnapshot:
    """The count as the page, /metrics, the summary and MQTT show it."""

    total: int  # white cells counted (the 100 %)
    uncertain: int
    unknown: int
    confident: int  # confident white cells: what the alert rules count
    counts: list[dict]  # DifferentialCount.table()
    alerts: list[AlertState]


class DifferentialCount:
    def __init__(self, config: DifferentialConfig, labels: list[str], white_cells=None):
        """`white_cells`: the labels that are white cells (the differential's 100 %); default all."""
        self.config = config
        self.labels = list(labels)
        self.white_cells = set(self.labels if white_cells is None else white_cells)
        self.counts: Counter[str] = Counter()
        self.confident: Counter[str] = Counter()
        self.uncertain = 0
        self.unknown = 0
        self._active: set[str] = set()
        # A rule naming a class the model cannot output would silently never fire: say so.
        self.warnings = [
            f"differential alert {rule.name!r}: class {name!r} is not a label of this model ({', '.join(labels)})"
            for rule in config.alerts
            for name in rule.classes
            if name not in labels
        ]

    def restore(self, saved: SessionCounts) -> None:
        """Carry on a session after a restart, from the counts in the database."""
        self.counts.update(saved.counts if self.config.count_uncertain else saved.confident)
        self.confident.update(saved.confident)
        self.uncertain += saved.uncertain
        self.unknown += saved.unknown
        self._active = {a.name for a in self.alerts() if a.active}

    @property
    def total(self) -> int:
        """White cells counted: the differential's 100 % (erythroblasts and platelets are not in it)."""
        return sum(n for name, n in self.counts.items() if name in self.white_cells)

    @property
    def confident_total(self) -> int:
        return sum(n for name, n in self.confident.items() if name in self.white_cells)

    def add(self, label: str, uncertain: bool) -> list[AlertState]:
        """Count one cell; returns the alerts that became active with it."""
        if uncertain:
            self.uncertain += 1
        if label == UNKNOWN:
            self.unknown += 1
            return []
        if uncertain and not self.config.count_uncertain:
            return []
        self.counts[label] += 1
        if uncertain:
            return []  # an unsure cell never moves an alert
        self.confident[label] += 1
        newly = []
        for alert in self.alerts():
            if alert.active and alert.name not in self._active:
                newly.append(alert)
            (self._active.add if alert.active else self._active.discard)(alert.name)
        return newly

    def _evaluate(self, rule: AlertRule) -> AlertState:
        total = self.confident_total
        cells = sum(self.confident[c] for c in rule.classes if c in self.white_cells)
        fraction = cells / total if total else 0.0
        active = total >= rule.min_cells and fraction >= rule.min_fraction
        lo, hi = wilson_interval(cells, total)
        return AlertState(
            rule.name,
            list(rule.classes),
            round(fraction, 4),
            (round(lo, 4), round(hi, 4)),
            rule.min_fraction,
            total,
            rule.min_cells,
            active,
        )

    def alerts(self) -> list[AlertState]:
        return [self._evaluate(rule) for rule in self.config.alerts]

    def snapshot(self) -> DifferentialSnapshot:
        return DifferentialSnapshot(
            self.total, self.uncertain, self.unknown, self.confident_total, self.table(), self.alerts()
        )

    def table(self) -> list[dict]:
        """Every label of the model (zeros included), with count, percentage of the white cells (per
        100 white cells for a class that is not one) and its 95 % interval, most frequent first;
        rejected cells are not in it (see `unknown`)."""
        total = self.total
        rows = []
        for name in self.labels:
            white = name in self.white_cells
            # a share of the white cells has an interval; a count per 100 of them (may pass 100) has none
            lo, hi = wilson_interval(self.counts[name], total) if white else (None, None)
            rows.append(
                {
                    "label": name,
                    "count": self.counts[name],
                    "percent": round(100 * self.counts[name] / total, 1) if total else 0.0,
                    "interval_percent": [round(100 * lo, 1), round(100 * hi, 1)] if white else None,
                    "white_cell": white,
                }
            )
        return sorted(rows, key=lambda r: (-r["count"], r["label"]))
