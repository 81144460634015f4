"""Published reference numbers for known boards, and pycoral-style marking of results outside ±30%.

The numbers are `invoke()` latencies of MobileNetV2 224 (docs/bench.md, "Published reference numbers"), so they
are compared with this run's invoke p50, never with end_to_end.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

TOLERANCE = 0.30  # pycoral's benchmarks flag a result more than 30% away from the reference
CORAL = "coral.ai Edge TPU benchmarks / pycoral reference CSVs"


@dataclass(frozen=True)
class Reference:
    board: str  # what the publisher measured on
    tag: str  # matched against device_tags(context)
    backend: str  # cpu | edgetpu
    model: str  # normalised architecture name
    size: int  # input side in pixels
    low_ms: float
    high_ms: float
    source: str


REFERENCES = (
    Reference(
        "Coral USB Accelerator, desktop host", "x86_64", "edgetpu", "mobilenetv2", 224, 2.6, 2.6, CORAL
    ),
    Reference(
        "Coral USB Accelerator, Raspberry Pi 4B",
        "raspberry-pi-4",
        "edgetpu",
        "mobilenetv2",
        224,
        4.55,
        4.55,
        CORAL,
    ),
    Reference(
        "desktop CPU only (Coral's CPU baseline)", "x86_64", "cpu", "mobilenetv2", 224, 51.0, 51.0, CORAL
    ),
    Reference(
        "embedded CPU only (quad Cortex-A53)", "cortex-a53", "cpu", "mobilenetv2", 224, 122.0, 122.0, CORAL
    ),
    Reference(
        "Raspberry Pi 4, XNNPACK int8",
        "raspberry-pi-4",
        "cpu",
        "mobilenetv2",
        224,
        17.0,
        20.0,
        "published XNNPACK int8 MobileNetV2 results on the Pi 4",
    ),
)

_ARM_PARTS = {"0xd03": "cortex-a53", "0xd08": "cortex-a72", "0xd0b": "cortex-a76"}
_BOARDS = (
    (r"raspberry pi (4|compute module 4|400)", "raspberry-pi-4"),
    (r"raspberry pi (5|compute module 5|500)", "raspberry-pi-5"),
    (r"jetson", "jetson"),
    (r"coral|phanbell", "coral-dev-board"),
)


def normalise_model(name: str | None) -> str:
    """'MobileNetV2', 'mobilenet_v2', 'mobilenet-v2-int8' -> 'mobilenetv2'."""
    text = re.sub(r"[^a-z0-9]", "", (name or "").lower())
    return re.sub(r"(int8|uint8|float16|float32|fp16|fp32|quant)$", "", text)


def device_tags(context: dict) -> set[str]:
    tags = set()
    machine = (context.get("machine") or "").lower()
    tags.add({"amd64": "x86_64"}.get(machine, machine))
    device = (context.get("device") or "").lower()
    tags.update(tag for pattern, tag in _BOARDS if re.search(pattern, device))
    tags.update(_ARM_PARTS[p] for p in context.get("arm_cpu_parts") or [] if p in _ARM_PARTS)
    return tags


def applicable(context: dict, backend: str, architecture: str | None, size: int | None) -> list[Reference]:
    """References for this device, backend, model and input size. The model matches by prefix, so a
    Keras model name such as 'mobilenetv2_classifier' counts as MobileNetV2."""
    tags, model = device_tags(context), normalise_model(architecture)
    return [
        r
        for r in REFERENCES
        if r.tag in tags and r.backend == backend and model.startswith(r.model) and r.size == size
    ]


def mark(ref: Reference, measured_ms: float, tolerance: float = TOLERANCE) -> dict:
    """The reference, the measurement, their ratio and whether it lies within ±tolerance of the range."""
    within = ref.low_ms * (1 - tolerance) <= measured_ms <= ref.high_ms * (1 + tolerance)
    mid = (ref.low_ms + ref.high_ms) / 2
    return {
        **asdict(ref),
        "measured_ms": round(measured_ms, 3),
        "ratio": round(measured_ms / mid, 3),
        "tolerance": tolerance,
        "within_tolerance": within,
    }


def check(result: dict) -> list[dict]:
    """Marks for every published number that applies to this run's device, backend and model."""
    model = result["bundle"]
    shape = model.get("input") or []
    size = int(shape[1]) if len(shape) >= 3 else None
    backend = (result.get("backend") or {}).get("backend") or "cpu"
    refs = applicable(result["context"], backend, model.get("architecture") or model.get("name"), size)
    return [mark(r, result["stages"]["invoke"]["p50_ms"]) for r in refs]
