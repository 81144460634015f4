"""`edge bench --plot FILE.png`: the latency histogram of each run (end_to_end, and invoke() beneath it),
with its p50, p95 and p99 marked. matplotlib is a host tool (the train extra), imported only here and only
when a plot is asked for; `require()` says so in one line before anything is measured."""

from __future__ import annotations

from pathlib import Path

from edge.errors import MissingExtraError


def require() -> None:
    """Fail before measuring when matplotlib is not installed (the device extra has no matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError("edge bench --plot", "train", "matplotlib") from None


def _label(r: dict) -> str:
    ctx = r["context"]
    return f"{r['bundle']['name']} {ctx['backend']}/{ctx['runtime']} {ctx['threads']} thr"


def write_histogram(path: str | Path, results: list[dict]) -> None:
    """One panel per run: the counts of its steady-state frames per latency bin (stats.histogram)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a device or in CI
    import matplotlib.pyplot as plt

    runs = [r for r in results if "histogram" in r]
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.6 * len(runs) + 0.6), squeeze=False)
    for ax, r in zip(axes[:, 0], runs, strict=True):
        for stage, colour in (("end_to_end", "tab:blue"), ("invoke", "tab:grey")):
            h = r["histogram"][stage]
            ax.stairs(
                h["counts"], h["edges_ms"], fill=stage == "end_to_end", alpha=0.6, color=colour, label=stage
            )
        e2e = r["stages"]["end_to_end"]
        for p, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(
                e2e[f"{p}_ms"],
                color="tab:red",
                linestyle=style,
                label=f"end_to_end {p} {e2e[f'{p}_ms']:.2f} ms",
            )
        above = r["histogram"]["end_to_end"]["above"]
        note = f"; {above} slower than the last bin" if above else ""
        ax.set_title(f"{_label(r)}: {e2e['count']} frames{note}", fontsize=9)
        ax.set_xlabel("latency per frame (ms)")
        ax.set_ylabel("frames")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
