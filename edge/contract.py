"""The part of a manifest that decides what a cell is called, sealed inside the model file.

`edge quantize` embeds the labels, the preprocessing spec, the uncertainty rule and the rejection
threshold in model.tflite as TFLite metadata (a named buffer, as TFLite Model Maker stores label
files). The model's sha256 in the manifest then covers them, and `Bundle.load` refuses a manifest
that disagrees with the model it describes: swapped labels or an edited CLAHE setting are caught
instead of giving silently wrong answers. A manifest can still be edited in its other fields
(notes, metrics); a signature (edge/signing.py) covers all of it.
"""

from __future__ import annotations

import json

METADATA_NAME = "edge_hemato.contract"
FILE_IDENTIFIER = b"TFL3"


def tflite_schema():
    """The TFLite flatbuffer schema's Python classes, from whichever runtime is installed."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tflite_runtime import schema_py_generated as schema  # type: ignore[no-redef]
        except ImportError:
            from tensorflow.lite.python import schema_py_generated as schema  # type: ignore[no-redef]
    return schema


def contract_of(manifest) -> dict:
    """What the model must carry about itself: the fields that change what a cell is called."""
    rejection = manifest.rejection
    return {
        "labels": list(manifest.labels),
        "preprocess": manifest.preprocess.to_dict(),
        "uncertainty": {
            "min_confidence": manifest.uncertainty.min_confidence,
            "min_margin": manifest.uncertainty.min_margin,
        },
        "rejection": None
        if rejection is None
        else {"method": rejection.method, "threshold": rejection.threshold, "file": rejection.file},
        # a detector's decoding and operating threshold decide which cells exist at all
        **({"detector": manifest.detector.to_dict()} if getattr(manifest, "detector", None) else {}),
        # the gate decides whether every cell is flagged; a site's scale, at what size cells are cut
        **({"gate": manifest.gate.to_dict()} if getattr(manifest, "gate", None) else {}),
        # the golden check decides whether a device is trusted to compute what the host computed
        **({"golden": manifest.golden.to_dict()} if getattr(manifest, "golden", None) else {}),
        **(
            {"site_scale": manifest.site.scale.to_dict()}
            if getattr(manifest, "site", None) and manifest.site.scale
            else {}
        ),
    }


def embed(tflite_bytes: bytes, contract: dict) -> bytes:
    """The same model with `contract` as its METADATA_NAME metadata (replacing an older one)."""
    import flatbuffers

    schema = tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(contract, sort_keys=True).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(tflite_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read(tflite_bytes: bytes) -> dict | None:
    """The embedded contract, or None when the model carries none (a bundle older than this check).
    Reads only the metadata table, without unpacking the weights."""
    schema = tflite_schema()
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return None


def disagreements(manifest, contract: dict) -> list[str]:
    """Which sealed fields of `manifest` differ from the model's own contract ([] when they agree)."""
    mine = contract_of(manifest)
    return [
        key
        for key in mine
        if json.dumps(mine[key], sort_keys=True) != json.dumps(contract.get(key), sort_keys=True)
    ]
