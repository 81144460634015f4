"""ONNX Runtime execution providers: which ones a user may ask for, which this machine has, and why a
GPU one is missing.

`--providers tensorrt,cuda,cpu` is a priority list. The providers of it that onnxruntime reports
(`onnxruntime.get_available_providers()`) are handed to the session in that order, so TensorRT takes
the graph, CUDA what TensorRT cannot run and the CPU the rest, as onnxruntime's TensorRT page
recommends. A provider the build does not have is left out with the reason (`why_missing`), read from
this machine the way `edge.runtime.edgetpu.probe` reads it: the installed wheel, the device nodes, the
CUDA and TensorRT libraries. Nothing here opens a GPU.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path

# What a user types -> onnxruntime's name for it.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT = {v: k for k, v in PROVIDERS.items()}
DEFAULT_PROVIDERS = "tensorrt,cuda,cpu"
GPU_WHEEL = "onnxruntime-gpu"
# A discrete NVIDIA GPU shows /dev/nvidia0; a Jetson's integrated GPU shows the Tegra nodes.
GPU_NODES = ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # JetPack's L4T version line


class ProviderError(ValueError):
    """A --providers value that names no provider we know."""


def select(requested: list[str], available: list[str], found: GpuProbe | None = None):
    """(the requested providers onnxruntime has, in order; {provider left out: why})."""
    chosen = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    # Why a provider is absent from onnxruntime's list needs only the wheel, not the library search.
    found = found or (probe(libraries=False) if missing else None)
    skipped = {p: why_missing(p, available, found) or "not in this onnxruntime build" for p in missing}
    return chosen, skipped


def parse_providers(text: str) -> list[str]:
    """'tensorrt,cuda,cpu' (short or onnxruntime names) -> onnxruntime's names, in order, once each."""
    names = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name = PROVIDERS.get(item.lower(), item if item in SHORT else None)
        if name is None:
            raise ProviderError(f"unknown provider {item!r}; choose from {', '.join(PROVIDERS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ProviderError(f"no provider given; for example {DEFAULT_PROVIDERS}")
    return names


@dataclass
class GpuProbe:
    """What this machine shows about an NVIDIA GPU, read from /dev, /etc and the library search path."""

    wheel: str | None = None  # "onnxruntime-gpu" or "onnxruntime" (the CPU build), None: neither
    wheel_version: str | None = None
    device_nodes: list[str] = field(default_factory=list)
    jetpack: str | None = None  # the L4T release line of a Jetson
    cudart: str | None = None
    cudnn: str | None = None
    tensorrt: str | None = None  # libnvinfer


def installed_wheel() -> tuple[str | None, str | None]:
    """Which onnxruntime distribution is installed (the GPU and CPU wheels share the module name)."""
    for dist in (GPU_WHEEL, "onnxruntime"):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def probe(root: str | os.PathLike = "/", libraries: bool = True) -> GpuProbe:
    """The GPU facts `why_missing` needs. `root` lets tests use a fake tree (libraries are then absent);
    `libraries=False` skips the library search (ldconfig, a few hundred ms)."""
    root = Path(root)
    real = str(root) == "/" and libraries
    wheel, version = installed_wheel()
    release = root / TEGRA_RELEASE.relative_to("/")
    jetpack = None
    if release.is_file():
        jetpack = release.read_text(errors="replace").splitlines()[0].lstrip("# ").strip() or "Jetson"
    return GpuProbe(
        wheel=wheel,
        wheel_version=version,
        device_nodes=[n for n in GPU_NODES if (root / n.lstrip("/")).exists()],
        jetpack=jetpack,
        cudart=ctypes.util.find_library("cudart") if real else None,
        cudnn=ctypes.util.find_library("cudnn") if real else None,
        tensorrt=ctypes.util.find_library("nvinfer") if real else None,
    )


def why_missing(provider: str, available: list[str], found: GpuProbe) -> str | None:
    """Why `provider` cannot run here, most likely cause first; None when nothing says it cannot.

    Only a provider missing from onnxruntime's list is left out beforehand. One in the list can still
    fail to start (no device, a missing CUDA or TensorRT library); the session then runs without it,
    and this explains it after the fact, so a wrong guess here never keeps a working provider out."""
    if provider == PROVIDERS["cpu"]:
        return None
    if provider not in available:
        if found.wheel != GPU_WHEEL:
            built = (
                f" (the installed onnxruntime {found.wheel_version} is the CPU build)" if found.wheel else ""
            )
            hint = (
                "install NVIDIA's onnxruntime-gpu wheel for this JetPack (docs/device.md)"
                if found.jetpack
                else "pip install onnxruntime-gpu"
            )
            return f"{GPU_WHEEL} not installed{built}: {hint}"
        return f"this {GPU_WHEEL} {found.wheel_version} was built without {SHORT.get(provider, provider)}"
    if not found.device_nodes:
        return f"no CUDA device ({', '.join(GPU_NODES)} absent)"
    if found.cudart is None:
        return "libcudart not found: install the CUDA runtime that this onnxruntime-gpu was built for"
    if provider == PROVIDERS["tensorrt"] and found.tensorrt is None:
        return "TensorRT (libnvinfer) not found: it comes with JetPack, or install TensorRT for this CUDA"
    return None
