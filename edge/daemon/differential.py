"""The running differential of a session (a slide), its alert rules, and the one definition of every
figure they give. The page, /api/status, the summary, /metrics and MQTT read a session's
`DifferentialCount`; the report and FHIR count a recorded slide with the same class
(edge/lab/slide.py), so one slide gives one figure everywhere.

- **White cells counted** (the differential's 100 %): cells the model named a white-cell class
  (edge/catalogue.py), each counted once. A rejected cell ("unknown") counts in no class. An uncertain
  cell (low confidence, small margin, or any cell of a microscope the gate calls different) waits
  for a technician and counts in no figure, unless `differential.count_uncertain` is true: then it
  counts at its top label in every figure, alerts included. By default, then, the white cells
  counted are the *confident* white cells (`base_words` says which, in words).
- **The differential**: each white-cell class as n of the white cells counted, a percentage with its
  95 % Wilson interval. Classes that are not white cells (erythroblasts, platelets) are counted per
  100 white cells (`per_100_white`), as labs report nucleated red cells: never a percentage.
- **An alert rule's fraction** (the blast fraction): the cells of its classes among the same white
  cells counted, so the blast fraction of a rule on `myeloblast` is the differential's myeloblast
  row. It fires at `min_fraction` once `min_cells` white cells are counted (100: a standard 100-cell
  differential; 20 % blasts among 5 cells is noise, not a finding).
- **Withheld**: on a microscope the gate calls different (edge/site.py) no rule fires; each says why,
  and how many cells the model called one of its classes (they come first in the review queue).

A percentage is computed and rounded once, here (`Fraction.percent`, one decimal); every renderer
prints that number as it is.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from edge.catalogue import UNKNOWN, cell_class
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


def withheld_note(classes: list[str], called: int, reason: str) -> str:
    """What the page, the summary, the report and FHIR say of a rule that may not fire: the gate must
    never hide a leukaemia, so the cells called one of its classes are named and sent to review."""
    what = "blast" if all(cell_class(c).blast for c in classes) else "/".join(classes)
    return f"{called} cell{'s' if called != 1 else ''} called {what}, {reason}: review them"


def base_words(count_uncertain: bool) -> str:
    """What the white cells counted are, as the report and the page say it ("28 of 207 ...")."""
    return "white cells counted, uncertain ones included" if count_uncertain else "confident white cells"


@dataclass(frozen=True)
class Fraction:
    """n cells out of `of` white cells counted: the one percentage of a figure."""

    n: int
    of: int

    @property
    def percent(self) -> float:
        """The figure, in per cent, rounded once to one decimal (0 when nothing is counted). For a
        class that is not a white cell the same division is a count per 100 white cells."""
        return round(100 * self.n / self.of, 1) if self.of else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % Wilson interval, in per cent (not rounded)."""
        low, high = wilson_interval(self.n, self.of)
        return 100 * low, 100 * high

    @property
    def interval_percent(self) -> list[float]:
        return [round(v, 1) for v in self.interval]

    def words(self, base: str) -> str:
        return f"{self.n} of {self.of} {base}"


@dataclass
class AlertState:
    name: str
    classes: list[str]
    fraction: float  # n / cells, rounded to 4 decimals (percent is the figure shown)
    interval: tuple[float, float]  # 95 % Wilson interval of `fraction`
    min_fraction: float
    cells: int  # white cells counted (the base)
    min_cells: int
    active: bool
    percent: float = 0.0  # the figure: Fraction(n, cells).percent
    interval_percent: list[float] | None = None  # its 95 % interval, in per cent, as shown
    n: int = 0  # cells of the rule's classes counted
    base: str = ""  # what `cells` are, in words (base_words)
    withheld: str | None = None  # why the rule may not fire (the microscope is not calibrated)
    called: int = 0  # cells the model called one of its classes, uncertain ones included
    note: str | None = None  # when withheld: what the technician must do about those cells

    def words(self) -> str:
        """e.g. "28 of 207 confident white cells"."""
        return Fraction(self.n, self.cells).words(self.base)


@dataclass(frozen=True)
class DifferentialSnapshot:
    """The count as the page, /metrics, the summary and MQTT show it."""

    total: int  # white cells counted (the 100 %)
    uncertain: int
    unknown: int
    confident: int  # confident white cells
    counts: list[dict]  # DifferentialCount.table()
    alerts: list[AlertState]
    base: str = ""  # what the white cells counted are, in words
    withheld: str | None = None  # the alerts' reason not to fire, when they may not


class DifferentialCount:
    def __init__(self, config: DifferentialConfig, labels: list[str], white_cells=None):
        """`white_cells`: the labels that are white cells (the differential's 100 %); default all."""
        self.config = config
        self.labels = list(labels)
        self.white_cells = set(self.labels if white_cells is None else white_cells)
        self.counts: Counter[str] = Counter()  # cells counted in the figures, per label
        self.confident: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()  # every cell by the model's label, uncertain and unknown too
        self.uncertain = 0
        self.unknown = 0
        self.withheld: str | None = None
        self._active: set[str] = set()
        # A rule naming a class the model cannot output would silently never fire: say so.
        self.warnings = [
            f"differential alert {rule.name!r}: class {name!r} is not a label of this model ({', '.join(labels)})"
            for rule in config.alerts
            for name in rule.classes
            if name not in labels
        ]

    @property
    def base(self) -> str:
        return base_words(self.config.count_uncertain)

    def restore(self, saved: SessionCounts) -> None:
        """Carry on a session after a restart, from the counts in the database."""
        self.counts.update(saved.counts if self.config.count_uncertain else saved.confident)
        self.confident.update(saved.confident)
        self.seen.update(saved.counts)
        if saved.unknown:
            self.seen[UNKNOWN] += saved.unknown
        self.uncertain += saved.uncertain
        self.unknown += saved.unknown
        self._active = {a.name for a in self.alerts() if a.active}

    def withhold(self, reason: str) -> None:
        """No rule fires any more, and each says `reason` (the microscope is not calibrated)."""
        self.withheld = reason
        self._active.clear()

    def flag_all(self) -> None:
        """Every cell counted so far becomes uncertain, as the gate makes the database's rows
        (edge.results.store.ResultStore.flag_session): counted again only when a technician decides."""
        self.uncertain = sum(self.seen.values())
        self.confident.clear()
        if not self.config.count_uncertain:
            self.counts.clear()

    @property
    def total(self) -> int:
        """White cells counted: the differential's 100 % (erythroblasts and platelets are not in it)."""
        return sum(n for name, n in self.counts.items() if name in self.white_cells)

    @property
    def confident_total(self) -> int:
        return sum(n for name, n in self.confident.items() if name in self.white_cells)

    def add(self, label: str, uncertain: bool) -> list[AlertState]:
        """Count one cell; returns the alerts that became active with it."""
        self.seen[label] += 1
        if uncertain:
            self.uncertain += 1
        if label == UNKNOWN:
            self.unknown += 1
            return []
        if not uncertain:
            self.confident[label] += 1
        elif not self.config.count_uncertain:
            return []  # an unsure cell waits for a technician
        self.counts[label] += 1
        newly = []
        for alert in self.alerts():
            if alert.active and alert.name not in self._active:
                newly.append(alert)
            (self._active.add if alert.active else self._active.discard)(alert.name)
        return newly

    def fraction(self, classes) -> Fraction:
        """The cells of `classes` among the white cells counted: a rule's figure."""
        return Fraction(sum(self.counts[c] for c in classes if c in self.white_cells), self.total)

    def _evaluate(self, rule: AlertRule) -> AlertState:
        f = self.fraction(rule.classes)
        share = f.n / f.of if f.of else 0.0
        active = self.withheld is None and f.of >= rule.min_cells and share >= rule.min_fraction
        lo, hi = wilson_interval(f.n, f.of)
        called = sum(self.seen[c] for c in rule.classes)
        return AlertState(
            rule.name,
            list(rule.classes),
            round(share, 4),
            (round(lo, 4), round(hi, 4)),
            rule.min_fraction,
            f.of,
            rule.min_cells,
            active,
            percent=f.percent,
            interval_percent=f.interval_percent,
            n=f.n,
            base=self.base,
            withheld=self.withheld,
            called=called,
            note=None if self.withheld is None else withheld_note(rule.classes, called, self.withheld),
        )

    def alerts(self) -> list[AlertState]:
        return [self._evaluate(rule) for rule in self.config.alerts]

    def snapshot(self) -> DifferentialSnapshot:
        return DifferentialSnapshot(
            self.total,
            self.uncertain,
            self.unknown,
            self.confident_total,
            self.table(),
            self.alerts(),
            self.base,
            self.withheld,
        )

    def table(self) -> list[dict]:
        """Every label of the model (zeros included), most frequent first: a white-cell class with its
        percentage of the white cells counted and its 95 % interval, any other class per 100 white
        cells (it may pass 100, and has no interval); rejected cells are not in it (see `unknown`)."""
        total = self.total
        rows = []
        for name in self.labels:
            f = Fraction(self.counts[name], total)
            if name in self.white_cells:
                figure = {"percent": f.percent, "interval_percent": f.interval_percent}
            else:
                figure = {"per_100_white": f.percent}
            rows.append({"label": name, "count": f.n, **figure, "white_cell": name in self.white_cells})
        return sorted(rows, key=lambda r: (-r["count"], r["label"]))
