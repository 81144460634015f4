"""Published reference numbers for known boards, and pycoral-style marking of results outside ±30%.

The numbers are `invoke()` latencies of MobileNetV2 224 (docs/bench.md, "Published reference numbers"), so they
are compared with this run's invoke p50, never with end_to_end.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

TOLERANCE = 0.30  # pycoral's benchmarks flag a result more than 30% away from the reference
CORAL = "coral.ai Edge TPU benchmarks / pycoral reference CSVs"
# Jetson figures: published, not measured here (no Jetson on this project's machines). Neither is an
# int8 ONNX Runtime number; the caveat of each row says what was measured instead.
TORCH2TRT = "NVIDIA-AI-IOT/torch2trt docs/benchmarks/jetson_xavier.md (torchvision mobilenet_v2, batch 1)"
OPENCV_ZOO = "opencv/opencv_zoo benchmark/README.md (image_classification_mobilenetv2_2022apr.onnx)"
# Coral's CPU-only figures are its baseline for the Edge TPU: TensorFlow Lite's CPU kernels of the
# time, before XNNPACK ran int8 models; today's XNNPACK is several times faster on the same CPU.
OLD_TFLITE = (
    "Coral's CPU baseline for its Edge TPU figures, with the TensorFlow Lite CPU kernels of that time "
    "(before XNNPACK ran int8 models): another runtime, shown for context, not checked"
)


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
    provider: str | None = (
        None  # onnx backend: the execution provider the number is for (cpu, cuda, tensorrt)
    )
    caveat: str = ""  # how the published measurement differs from this bench's invoke p50
    # Like with like (the same int8 model on the same kind of runtime): a run outside ±TOLERANCE is
    # marked. A figure for another runtime or model is shown for context, never marked OUTSIDE.
    checked: bool = True


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
        "desktop CPU only (Coral's CPU baseline)",
        "x86_64",
        "cpu",
        "mobilenetv2",
        224,
        51.0,
        51.0,
        CORAL,
        caveat=OLD_TFLITE,
        checked=False,
    ),
    Reference(
        "embedded CPU only (quad Cortex-A53)",
        "cortex-a53",
        "cpu",
        "mobilenetv2",
        224,
        122.0,
        122.0,
        CORAL,
        caveat=OLD_TFLITE,
        checked=False,
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
    Reference(
        "Jetson AGX Xavier, TensorRT FP16 (torch2trt)",
        "jetson-agx-xavier",
        "onnx",
        "mobilenetv2",
        224,
        1.67,
        1.67,
        TORCH2TRT,
        provider="tensorrt",
        checked=False,
        caveat="published, not measured here: float model built in FP16 by TensorRT through torch2trt, GPU latency",
    ),
    Reference(
        "Jetson Orin Nano, GPU (OpenCV DNN, CUDA FP16)",
        "jetson-orin-nano",
        "onnx",
        "mobilenetv2",
        224,
        7.87,
        7.87,
        OPENCV_ZOO,
        provider="cuda",
        checked=False,
        caveat="published, not measured here: OpenCV DNN's CUDA backend, float model, median incl. pre/postprocessing",
    ),
    Reference(
        "Jetson Orin Nano, CPU (OpenCV DNN)",
        "jetson-orin-nano",
        "onnx",
        "mobilenetv2",
        224,
        17.3,
        17.3,
        OPENCV_ZOO,
        provider="cpu",
        checked=False,
        caveat="published, not measured here: OpenCV DNN on the 6 Cortex-A78AE cores, float model, median",
    ),
    Reference(
        "Jetson Nano, GPU (OpenCV DNN, CUDA FP32)",
        "jetson-nano",
        "onnx",
        "mobilenetv2",
        224,
        28.45,
        28.45,
        OPENCV_ZOO,
        provider="cuda",
        checked=False,
        caveat="published, not measured here: OpenCV DNN's CUDA backend, float model, median incl. pre/postprocessing",
    ),
)

_ARM_PARTS = {"0xd03": "cortex-a53", "0xd08": "cortex-a72", "0xd0b": "cortex-a76"}
_BOARDS = (
    (r"raspberry pi (4|compute module 4|400)", "raspberry-pi-4"),
    (r"raspberry pi (5|compute module 5|500)", "raspberry-pi-5"),
    (r"jetson", "jetson"),
    (r"jetson agx xavier", "jetson-agx-xavier"),
    (r"jetson orin nano", "jetson-orin-nano"),
    (r"jetson nano", "jetson-nano"),  # the original Nano; "Jetson Orin Nano" does not match
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


def applicable(
    context: dict, backend: str, architecture: str | None, size: int | None, provider: str | None = None
) -> list[Reference]:
    """References for this device, backend (and onnx provider), model and input size. The model matches
    by prefix, so a Keras model name such as 'mobilenetv2_classifier' counts as MobileNetV2."""
    tags, model = device_tags(context), normalise_model(architecture)
    return [
        r
        for r in REFERENCES
        if r.tag in tags
        and r.backend == backend
        and r.provider in (None, provider)
        and model.startswith(r.model)
        and r.size == size
    ]


def mark(ref: Reference, measured_ms: float, tolerance: float = TOLERANCE) -> dict:
    """The reference, the measurement, their ratio and whether it lies within ±tolerance of the range
    (None for a reference that is not like with like: `checked` False)."""
    within = ref.low_ms * (1 - tolerance) <= measured_ms <= ref.high_ms * (1 + tolerance)
    within = within if ref.checked else None
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
    described = result.get("backend") or {}
    backend = described.get("backend") or "cpu"
    provider = (described.get("providers") or [None])[0] if backend == "onnx" else None
    refs = applicable(
        result["context"], backend, model.get("architecture") or model.get("name"), size, provider
    )
    return [mark(r, result["stages"]["invoke"]["p50_ms"]) for r in refs]
