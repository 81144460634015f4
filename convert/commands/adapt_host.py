"""`edge adapt --host`: the training host's calibration. edge's own `edge adapt` reads the site's cells
and reaches this through the entry points "edge.adapt" (pyproject.toml), as it reaches the training
commands through "edge.commands": edge never imports convert (docs/design.md)."""

from __future__ import annotations

from convert.commands._extras import require_onnx_export, require_train
from edge.bundle import ONNX_MODEL


def host_calibration():
    """The calibration function, once the train extra is known to be here (else one line naming it)."""
    require_train("edge adapt --host")
    return calibrate


def calibrate(bundle, cells, out_dir, request, **options):
    """convert/host_adapt.py adapt_on_host; a bundle with model.onnx also needs the ONNX tools."""
    from convert.host_adapt import adapt_on_host

    if ONNX_MODEL in bundle.manifest.files:
        require_onnx_export("edge adapt --host (the bundle has model.onnx)")
    return adapt_on_host(bundle, cells, out_dir, request, **options)
