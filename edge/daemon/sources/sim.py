"""`sim`: a simulated microscope. Renders a field of red cells with one white cell centred, as a
technician would centre it, and holds it still for `dwell_s` seconds before the stage moves to another
field (so a cell held in view is one cell, as on a real microscope). The embedded default source."""

from __future__ import annotations

import numpy as np

from edge.daemon.sources import Frame, FrameSource, Pacer
from edge.synthetic import CLASSES, render_field

DEFAULT_FPS = 10.0


class Source(FrameSource):
    kind = "sim"

    def __init__(self, target, config, **_):
        super().__init__(target, config)
        self.options = config.sim
        self.classes = tuple(self.options.classes) or CLASSES
        self.fps = config.fps or DEFAULT_FPS
        self.live = self.options.paced  # unpaced: a benchmark feed, never dropped
        self.pool: list[tuple[np.ndarray, str]] = []

    def open(self) -> None:
        self.rng = np.random.default_rng(self.options.seed)
        self.pacer = Pacer(self.fps if self.options.paced else 0.0)
        self.dwell = max(1, int(round(self.options.dwell_s * self.fps)))
        self.count = 0
        self.current = self.classes[0]
        self.field: np.ndarray | None = None
        self.pool = [self._render() for _ in range(self.options.prerender)]

    def _render(self) -> tuple[np.ndarray, str]:
        if self.count % self.dwell == 0 or self.field is None:  # the stage moves to another cell
            self.current = self.classes[int(self.rng.integers(len(self.classes)))]
            self.field, _ = render_field(
                self.rng, self.options.width, self.options.height, center_class=self.current
            )
        self.count += 1
        return self.field.copy(), self.current  # a frame of its own, as a camera's

    def wait_for_next(self) -> None:
        self.pacer.wait()

    def read(self) -> Frame:
        if self.pool:
            image, name = self.pool[self.count % len(self.pool)]
            self.count += 1
        else:
            image, name = self._render()
        return Frame(image=image, ref=f"sim:{name}")

    def describe(self) -> dict:
        info = {**super().describe(), "frame": f"{self.options.width}x{self.options.height}"}
        if self.pool:
            info["note"] = f"{len(self.pool)} pre-rendered synthetic fields"
        return info
