"""`edge info BUNDLE`: a readable summary of a bundle's manifest (verifies it on the way)."""

from __future__ import annotations

import json

import click

from edge.bundle import Bundle
from edge.commands._options import json_flag


@click.command()
@click.argument("bundle", type=click.Path(path_type=str))
@json_flag("Print the whole manifest as JSON.")
def info(bundle, as_json):
    """Verify BUNDLE (schema, hashes, labels) and summarise its manifest."""
    b = Bundle.load(bundle)
    click.echo(json.dumps(b.manifest.to_dict(), indent=2) if as_json else "\n".join(describe(b)))


def describe(b: Bundle) -> list[str]:
    """The summary's lines: what the model is, then where it came from and what was done to it."""
    return _model_lines(b) + _provenance_lines(b)


def _weights(m) -> str:
    weights = m.model.get("weights", "?")
    if isinstance(weights, dict):  # training records name, file and hash; the name and hash say enough here
        digest = weights.get("sha256") or ""
        weights = weights.get("name", "?") + (f" (sha256 {digest[:8]}…)" if digest else "")
    return weights


def _preprocess_line(p) -> str:
    return (
        f"preprocess  {p.size}px {p.aspect} {p.interpolation}, {p.color_order}, contrast={p.contrast}"
        + (
            f" (clip {p.clahe_clip_limit:g}, tiles {p.clahe_tile_grid}x{p.clahe_tile_grid})"
            if p.contrast == "clahe"
            else ""
        )
        + (f", white balance to {list(p.white_reference)}" if p.color == "white_balance" else "")
    )


def _model_lines(b: Bundle) -> list[str]:
    m = b.manifest
    q = f" scale={m.input.scale:g} zero_point={m.input.zero_point}" if m.input.scale else ""
    lines = [
        f"bundle      {b.path}",
        f"model       {m.model.get('architecture', '?')} ({m.model.get('precision', '?')}), weights: {_weights(m)}",
        f"labels      {', '.join(m.labels)}",
        f"input       {m.input.dtype} {'x'.join(map(str, m.input.shape))}{q}",
        _preprocess_line(m.preprocess),
        f"uncertain   confidence < {m.uncertainty.min_confidence:g} or margin < {m.uncertainty.min_margin:g} ({m.uncertainty.source})"
        if m.task == "classifier"
        else f"outputs     {m.detector.heatmap} (score map), {m.detector.boxes} (box distances)",
    ]
    if m.detector is not None:
        d = m.detector
        lines.insert(
            2,
            f"task        detector of {', '.join(m.labels)}: {d.method}, stride {d.stride}, threshold {d.threshold:g}",
        )
        lines.append(
            f"crop rule   square of side max(w, h) / {d.crop.cell_fraction:g} around each cell, {d.crop.border} "
            f"outside the frame ({d.crop.source})"
        )
    return lines


def _provenance_lines(b: Bundle) -> list[str]:
    m, lines = b.manifest, []
    fingerprint = m.training.get("data_fingerprint")
    if isinstance(fingerprint, dict):  # one per split
        lines.append("data        fingerprint " + ", ".join(f"{k} {v[:16]}" for k, v in fingerprint.items()))
    elif fingerprint:
        lines.append(f"data        fingerprint {fingerprint[:16]}")
    for source in (m.training.get("sources") or {}).get("train", []):
        lines.append(f"trained on  {source.get('split')}: {source.get('n')} images {source.get('per_class')}")
    for metric in m.metrics:
        n = f", n={metric.n}" if metric.n else ""
        lines.append(f"metric      {metric.name} = {metric.value:.4f}  [{metric.split}{n}]")
    lines += [f"file        {name}  sha256 {digest[:16]}…" for name, digest in m.files.items()]
    if m.edgetpu:
        lines.append(f"edgetpu     {json.dumps(m.edgetpu)[:120]}")
    lines.append(
        f"written by  {m.writer.get('name', '?')} {m.writer.get('version', '?')} at {m.writer.get('time', '?')}"
    )
    s = b.signature
    lines.append(
        f"signed by   {s.signer!r} (key {s.key_id}) at {s.signed}" if s else "signed by   nobody (unsigned)"
    )
    if m.uncertainty.warning:
        lines.append(f"WARNING     {m.uncertainty.warning}")
    if m.rejection:
        lines.append(
            f"rejection   {m.rejection.method}: unknown above {m.rejection.threshold:g} ({m.rejection.source})"
        )
    site = m.calibration.get("site_adaptation")
    if site:
        before, after = site.get("before", {}), site.get("after", {})
        lines.append(
            f"adapted     to {site['site']['split']} ({site['site']['n']} cells, fingerprint "
            f"{site['site']['fingerprint'][:16]}) from bundle sha256 {site['from_bundle']['sha256'][:16]}…; "
            f"held-back accuracy {before.get('accuracy')} -> {after.get('accuracy')}"
        )
    return lines
