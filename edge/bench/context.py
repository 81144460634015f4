"""What a benchmark number depends on, recorded with every run: device, cores, governor, load,
runtime and delegate, library versions, and which model (the bundle's sha256)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

import cv2
import numpy as np

from edge import __version__

_GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
_DT_MODEL = Path("/proc/device-tree/model")
_CPUINFO = Path("/proc/cpuinfo")
_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def cpu_name(cpuinfo: str | None = None) -> str | None:
    """The CPU's marketing name from /proc/cpuinfo ("model name", or "Hardware"/"Model" on ARM)."""
    text = cpuinfo if cpuinfo is not None else (_read(_CPUINFO) or "")
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def arm_cpu_parts(cpuinfo: str | None = None) -> set[str]:
    """ARM "CPU part" ids (0xd03 Cortex-A53, 0xd08 Cortex-A72, 0xd0b Cortex-A76), for board matching."""
    text = cpuinfo if cpuinfo is not None else (_read(_CPUINFO) or "")
    return {m.lower() for m in re.findall(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", text, re.MULTILINE)}


def device_model() -> str:
    """/proc/device-tree/model on boards that have one (Pi, Jetson, Coral), else the CPU name."""
    return _read(_DT_MODEL) or cpu_name() or platform.processor() or platform.machine() or "unknown"


def governor() -> str | None:
    return _read(_GOVERNOR)


def soc_temperature_c() -> float | None:
    raw = _read(_THERMAL)
    try:
        return round(int(raw) / 1000, 1) if raw else None
    except ValueError:
        return None


def collect(backend_description: dict | None = None, bundle=None, lab=None) -> dict:
    """The context dict stored under "context" in the JSON (plus "warnings" for what skews numbers)."""
    gov = governor()
    warnings = []
    if gov is None:
        warnings.append("CPU governor unknown (no cpufreq in this kernel / VM): frequency may vary")
    elif gov != "performance":
        warnings.append(
            f"CPU governor is {gov!r}, not 'performance': numbers vary with frequency scaling "
            "(sudo cpupower frequency-set -g performance)"
        )
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    cores = os.cpu_count() or 1
    if load and load[0] > 0.5 * cores:
        warnings.append(
            f"machine is busy (load average {load[0]} on {cores} cores): other work competes for the CPU"
        )
    desc = dict(backend_description or {})
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    if (desc.get("threads") or 0) > usable:
        warnings.append(
            f"{desc['threads']} threads on {usable} usable cores: the threads take turns on the cores, so "
            f"the numbers measure the switching too (--threads {usable} or fewer)"
        )
    context = {
        "device": device_model(),
        "cpu": cpu_name(),
        "arm_cpu_parts": sorted(arm_cpu_parts()),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cores": cores,
        "governor": gov,
        "load_average": load,
        "soc_temperature_c": soc_temperature_c(),
        "backend": desc.get("backend"),
        "runtime": desc.get("runtime"),
        "runtime_version": desc.get("runtime_version"),
        "delegate": desc.get("delegate"),
        "threads": desc.get("threads"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        # How preprocessing ran (edge.labtables or cvtColor): the same bytes, not the same time.
        "preprocess": {
            "lab": getattr(lab, "name", "cvtcolor"),
            "lab_tables": getattr(lab, "name", "") == "tables",
        },
        "edge": __version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "warnings": warnings,
    }
    if bundle is not None:
        context["bundle_sha256"] = bundle.sha256
    return context
