"""Edge TPU backend: the bundle's `model_edgetpu.tflite` through `load_delegate("libedgetpu.so.1")`.

No pycoral (Google's needs Python <= 3.9; the PyPI package of that name is unrelated): the delegate is
loaded with `load_delegate` from whichever TFLite runtime imported, as pycoral's `make_interpreter`
does. When it fails, the error says what to check, from what this machine shows (`diagnose`).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import gc
import glob
import os
import platform
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from edge.bundle import Bundle
from edge.errors import RuntimeUnavailableError
from edge.runtime.cpu_tflite import TFLiteBackend
from edge.runtime.tflite import import_runtime

# pycoral's names for the runtime library on each system.
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}.get(
    platform.system(), "libedgetpu.so.1"
)
# USB Accelerator before its first use (the runtime uploads firmware) and after (it re-enumerates).
USB_IDS = {
    ("1a6e", "089a"): "Coral USB Accelerator (no firmware yet)",
    ("18d1", "9302"): "Coral USB Accelerator",
}
PCI_IDS = {("0x1ac1", "0x089a"): "Coral PCIe/M.2 Edge TPU"}
CORAL_APT = "Coral's apt repository (README, device install): sudo apt install libedgetpu1-std"


@dataclass
class EdgeTpuDevice:
    kind: str  # "usb" or "pci"
    name: str
    where: str  # sysfs or /dev path
    usb_speed_mbps: int | None = None  # 5000 on a USB3 port, 480 on USB2
    node: str | None = None  # /dev/apex_N for PCIe
    accessible: bool | None = None  # can this user open the device node?


@dataclass
class EdgeTpuProbe:
    """What this machine shows about Edge TPUs, read from sysfs and /dev (no device is opened)."""

    devices: list[EdgeTpuDevice] = field(default_factory=list)
    library: str | None = None  # resolved path or name of libedgetpu, None when absent
    apex_nodes: list[str] = field(default_factory=list)
    in_plugdev: bool | None = None
    in_apex: bool | None = None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def find_libedgetpu() -> str | None:
    """Where libedgetpu is: ctypes' search, then `ldconfig -p` (find_library misses some layouts)."""
    found = ctypes.util.find_library("edgetpu")
    if found:
        return found
    for ldconfig in ("ldconfig", "/sbin/ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            if "libedgetpu.so" in line and "=>" in line:
                return line.split("=>", 1)[1].strip()
    return None


def _in_group(name: str) -> bool | None:
    try:
        import grp

        group = grp.getgrnam(name)
    except (ImportError, KeyError):
        return None
    return group.gr_gid in os.getgroups()


def probe(root: str | os.PathLike = "/") -> EdgeTpuProbe:
    """Edge TPUs on USB and PCIe, the /dev/apex_* nodes and libedgetpu. `root` lets tests use a fake tree."""
    root = Path(root)
    result = EdgeTpuProbe(library=find_libedgetpu() if str(root) == "/" else None)
    for dev in sorted((root / "sys/bus/usb/devices").glob("*")):
        ids = (_read(dev / "idVendor").lower(), _read(dev / "idProduct").lower())
        if ids in USB_IDS:
            speed = _read(dev / "speed")
            result.devices.append(
                EdgeTpuDevice(
                    "usb", USB_IDS[ids], str(dev), usb_speed_mbps=int(float(speed)) if speed else None
                )
            )
    result.apex_nodes = sorted(glob.glob(str(root / "dev" / "apex_*")))
    for dev in sorted((root / "sys/bus/pci/devices").glob("*")):
        ids = (_read(dev / "vendor").lower(), _read(dev / "device").lower())
        if ids in PCI_IDS:
            result.devices.append(EdgeTpuDevice("pci", PCI_IDS[ids], str(dev)))
    for i, node in enumerate(result.apex_nodes):
        pci = [d for d in result.devices if d.kind == "pci"]
        entry = pci[i] if i < len(pci) else None
        if entry is None:
            entry = EdgeTpuDevice("pci", PCI_IDS[("0x1ac1", "0x089a")], node)
            result.devices.append(entry)
        entry.node = node
        entry.accessible = os.access(node, os.R_OK | os.W_OK)
    result.in_plugdev, result.in_apex = _in_group("plugdev"), _in_group("apex")
    return result


def diagnose(device: str | None, error: BaseException | str, found: EdgeTpuProbe | None = None) -> str:
    """One paragraph for the person at the microscope: what failed and what to check, most likely first."""
    found = found or probe()
    want = (device or "").split(":")[0]  # "usb", "pci" or "" (any)
    usb = [d for d in found.devices if d.kind == "usb"]
    pci = [d for d in found.devices if d.kind == "pci"]
    hints: list[str] = []
    if isinstance(error, OSError) or (found.library is None and "cannot open shared object" in str(error)):
        hints.append(f"{EDGETPU_LIBRARY} is not installed: install libedgetpu1-std from {CORAL_APT}")
    if want in ("", "usb") and not usb and (want == "usb" or not pci):
        hints.append(
            "no USB Accelerator is visible (USB id 1a6e:089a or 18d1:9302): plug it straight into a USB3 (blue) port "
            "with the supplied cable, and give the board enough power (official supply; a powered hub on a Pi)"
        )
    for d in usb:
        if d.usb_speed_mbps is not None and d.usb_speed_mbps < 5000:
            hints.append(
                f"{d.name} runs at {d.usb_speed_mbps} Mbit/s: move it to a USB3 port (USB2 is several times slower)"
            )
    if usb and not isinstance(error, OSError):
        hints.append(
            "the USB Accelerator is present but could not be opened: check the udev rule that libedgetpu1-std installs "
            "(/lib/udev/rules.d/60-libedgetpu1-std.rules gives both USB ids to group plugdev), that your user is in "
            "the plugdev group"
            + (" (it is not)" if found.in_plugdev is False else "")
            + ", then unplug and replug it; if it keeps failing, the port may not supply enough current"
        )
    if want in ("", "pci") and pci:
        nodes = [d for d in pci if d.node]
        if not nodes:
            hints.append(
                "a PCIe/M.2 Edge TPU is on the bus but there is no /dev/apex_0: install the gasket driver "
                "(sudo apt install gasket-dkms from Coral's repository, or build it for your kernel) and reboot"
            )
        elif any(d.accessible is False for d in nodes):
            hints.append(
                "/dev/apex_0 exists but this user cannot open it: add a udev rule "
                'SUBSYSTEM=="apex", MODE="0660", GROUP="apex" and `sudo usermod -aG apex $USER`, then log in again'
            )
    elif want == "pci" or (want == "" and not usb):
        hints.append(
            ("for an M.2/PCIe card: " if want == "" else "")
            + "no PCIe/M.2 Edge TPU found (PCI id 1ac1:089a, /dev/apex_*): seat the card, enable PCIe on the board, "
            "and install the gasket driver (gasket-dkms)"
        )
    if not hints:
        hints.append(
            "the Edge TPU may be busy in another process (only one process can use it) or need a replug"
        )
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    target = device or "any device"
    return (
        f"Edge TPU delegate failed for {target} ({first}). Check: "
        + "; ".join(hints)
        + ". `edge doctor` shows more."
    )


@contextlib.contextmanager
def _quiet_failed_delegate():
    """When libedgetpu is missing, LiteRT's Delegate object fails in its __init__, and its __del__
    then prints "AttributeError: 'Delegate' object has no attribute '_library'" as an ignored
    exception. Our one-line error says what happened; that traceback only alarms."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, AttributeError) and "_library" in str(unraisable.exc_value)):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except BaseException as exc:
        # The error's traceback holds the frame of the half-built Delegate: clear it, or the object
        # outlives the collection below and its __del__ prints after the hook is gone.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        gc.collect()  # the failed Delegate goes now, while the hook is in place
        sys.unraisablehook = previous


@dataclass
class Options:
    device: str | None = None  # "usb", "usb:0", "pci:0", ...; None: the first Edge TPU found
    runtime: str = "auto"
    threads: int | None = None  # CPU threads for the ops the Edge TPU does not run


class Backend(TFLiteBackend):
    """The bundle's model_edgetpu.tflite with the Edge TPU delegate."""

    name = "edgetpu"
    resizable_batch = False  # the compiled model has a fixed input shape

    def __init__(self, bundle: Bundle, options: Options | None = None):
        options = options or Options()
        self.device = options.device or None
        model_file = bundle.model_path(edgetpu=True)  # BundleError when the bundle was never compiled
        try:
            runtime = import_runtime(options.runtime or "auto")
        except ImportError as exc:
            raise RuntimeUnavailableError(str(exc)) from None
        delegate_options = {"device": self.device} if self.device else {}
        try:
            with _quiet_failed_delegate():
                delegate = runtime.load_delegate(EDGETPU_LIBRARY, delegate_options)
        except (ValueError, OSError) as exc:  # ValueError: no device; OSError: no libedgetpu
            raise RuntimeUnavailableError(diagnose(self.device, exc)) from None
        self.delegate = delegate  # the interpreter must not outlive it
        super().__init__(bundle, model_file, [delegate], options.runtime, options.threads)

    def _allocation_error(self, exc: Exception) -> Exception:
        return RuntimeUnavailableError(
            f"{self.model_file}: the Edge TPU interpreter cannot run it ({exc}); "
            "was it compiled by an edgetpu_compiler newer than the installed libedgetpu?"
        )

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            delegate=f"edgetpu ({EDGETPU_LIBRARY})", device=self.device or "any", model=self.model_file.name
        )
        return info
