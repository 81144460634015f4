"""RUN_DIR outputs: config.json, report.json, training-curve and confusion PNGs, a terminal summary."""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.metrics import format_report

log = logging.getLogger(__name__)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (
        "edge-hemato",
        "tensorflow",
        "keras",
        "numpy",
        "opencv-python-headless",
        "albumentations",
        "imagehash",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _config(cfg, labels, resolved, split_layer, data) -> dict:
    spec = cfg.spec().to_dict()
    return {
        "train": cfg.to_dict(),
        "labels": list(labels),
        "arch": cfg.arch,
        # What quantization copies into the bundle manifest: the exact preprocessing of training.
        "preprocess": spec,
        "input": {
            "shape": [1, spec["size"], spec["size"], 3],
            "range": "0-255 RGB",
            "dtype": "float32 (uint8 values)",
        },
        "weights": asdict(resolved),
        "fine_tune_from": split_layer,
        # One string for the bundle manifest (all the run's images); the per-split fingerprints next to it.
        "data_fingerprint": data["all_fingerprint"],
        "data_fingerprints": data["fingerprint"],
        # Each source (root folder) with its fingerprint and per-class counts; the bundle records them.
        "data_sources": data.get("sources"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _dump(path: Path, obj) -> None:
    path.write_text(
        json.dumps(obj, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    )


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        step = 0
        for phase in dict.fromkeys(r["phase"] for r in history):
            rows = [r for r in history if r["phase"] == phase]
            xs = np.arange(step + 1, step + len(rows) + 1)
            short = phase.split(" (")[0]
            ax.plot(xs, [r.get(metric, np.nan) for r in rows], "-", label=f"{short} train")
            ax.plot(xs, [r.get(f"val_{metric}", np.nan) for r in rows], "--", label=f"{short} val")
            step += len(rows)
        ax.set_xlabel("epoch (phases in sequence)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curves (train split augmented; val unaugmented)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(report: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(report["confusion"])
    labels = report["labels"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {report['accuracy'] * 100:.2f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_run(
    out: Path, cfg, labels, resolved, split_layer, data, results, history, best_epochs, wall
) -> dict:
    config = _config(cfg, labels, resolved, split_layer, data)
    _dump(out / "config.json", config)
    report = {
        "kind": "train",
        "arch": cfg.arch,
        "labels": list(labels),
        "preprocess": config["preprocess"],
        "weights": config["weights"],
        "fine_tune_from": split_layer,
        "splits": results,
        "history": history,
        "best_epochs": best_epochs,
        "wall_time_s": round(wall, 1),
        "data": data,
        "versions": versions(),
        "metrics_note": "val metrics come from the early-stopping-restored best weights (monitor val_loss); "
        "train metrics are on unaugmented training images",
    }
    _dump(out / "report.json", report)
    plot_curves(history, out / "training_curves.png")
    plot_confusion(results["val"], out / "confusion_val.png", f"{cfg.arch} val")
    print_summary(report, out)
    return report


def print_summary(report: dict, out: Path) -> None:
    val, train = report["splits"]["val"], report["splits"]["train"]
    log.info("\n" + "=" * 72)
    log.info(
        f"{report['arch']}  weights {report['weights']['name']}  fine-tuned above {report['fine_tune_from']}"
    )
    log.info(
        f"train: {report['data']['n_train']} images, val: {report['data']['n_val']} images, "
        f"skipped {len(report['data']['skipped'])}, near-duplicates train/val {len(report['data']['near_duplicates'])}"
    )
    log.info(f"best epochs {report['best_epochs']}   wall time {report['wall_time_s'] / 60:.1f} min")
    log.info(f"train accuracy {train['accuracy'] * 100:.2f}%   loss {train['loss']:.4f}")
    log.info(f"VAL   loss {val['loss']:.4f}")
    log.info(format_report(val))
    log.info(f"outputs: {out}/model.keras config.json report.json training_curves.png confusion_val.png")
    log.info("=" * 72)


def write_folds(out: Path, cfg, labels, resolved, split_layer, data, folds, wall) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    _dump(out / "config.json", _config(cfg, labels, resolved, split_layer, data))
    acc = np.array([f["val"]["accuracy"] for f in folds])
    f1 = np.array([f["val"]["macro_f1"] for f in folds])
    summary = {
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)),
        "macro_f1_mean": float(f1.mean()),
        "macro_f1_std": float(f1.std(ddof=1)),
    }
    report = {
        "kind": "folds",
        "arch": cfg.arch,
        "labels": list(labels),
        "k": cfg.folds,
        "preprocess": cfg.spec().to_dict(),
        "weights": asdict(resolved),
        "fine_tune_from": split_layer,
        "summary": summary,
        "folds": folds,
        "wall_time_s": round(wall, 1),
        "data": data,
        "versions": versions(),
    }
    _dump(out / "report.json", report)
    total = sum(np.array(f["val"]["confusion"]) for f in folds)
    pooled = {
        "labels": list(labels),
        "confusion": total.tolist(),
        "accuracy": float(np.trace(total) / total.sum()),
    }
    plot_confusion(pooled, out / "confusion_folds.png", f"{cfg.arch} {cfg.folds}-fold (pooled)")
    log.info("\n" + "=" * 72)
    log.info(f"{cfg.folds}-fold cross-validation, {cfg.arch}, {data['n']} images, img size {cfg.img_size}")
    for f in folds:
        log.info(
            f"  fold {f['fold']}: accuracy {f['val']['accuracy'] * 100:.2f}%  macro-F1 {f['val']['macro_f1']:.4f}"
        )
    log.info(
        f"accuracy {summary['accuracy_mean'] * 100:.2f}% ± {summary['accuracy_std'] * 100:.2f}  "
        f"macro-F1 {summary['macro_f1_mean']:.4f} ± {summary['macro_f1_std']:.4f} (mean ± sample std)"
    )
    log.info(f"wall time {wall / 60:.1f} min; outputs in {out}")
    log.info("=" * 72)
    return report
