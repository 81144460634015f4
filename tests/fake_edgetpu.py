"""A test double for the Edge TPU runtime (libedgetpu.so.1) behind the TFLite runtime's `load_delegate`.

What is real and what is not:
- Real: the TFLite interpreter class of whichever runtime imported, and its delegate mechanism. The
  double hands the interpreter a genuine `TfLiteDelegate` C struct (built with ctypes); the
  interpreter calls its `Prepare` from C++ through `ModifyGraphWithDelegate`, exactly as it does with
  the object libedgetpu returns. Our Prepare claims no nodes, so the graph runs on the CPU: the
  double stands for a device that computes the same numbers, which is what an Edge TPU compiled
  model is meant to do.
- Faithful to `load_delegate` (ai_edge_litert / tflite_runtime / tf.lite, identical code):
  the library not installed -> OSError "<lib>: cannot open shared object file: No such file or
  directory" (ctypes' LoadLibrary, not caught by load_delegate); the library present but no device
  matching `{"device": ...}` -> ValueError "Failed to load delegate from <lib>\\n<message>", where
  libedgetpu's message is empty, as on real hardware.
- Not covered: the Edge TPU compiler's custom op (`edgetpu-custom-op`), timing, USB re-enumeration,
  several processes competing for one device.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from edge.runtime import tflite

LIBRARY = "libedgetpu.so.1"

# TfLiteStatus (*Prepare)(TfLiteContext*, TfLiteDelegate*)
_PREPARE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class TfLiteDelegate(ctypes.Structure):
    """tensorflow/lite/core/c/common.h: struct TfLiteDelegate (the layout since TF 2.13)."""

    _fields_ = [
        ("data_", ctypes.c_void_p),
        ("Prepare", _PREPARE),
        ("CopyFromBufferHandle", ctypes.c_void_p),
        ("CopyToBufferHandle", ctypes.c_void_p),
        ("FreeBufferHandle", ctypes.c_void_p),
        ("flags", ctypes.c_int64),
        ("opaque_delegate_builder", ctypes.c_void_p),
    ]


class FakeDelegate:
    """What `load_delegate` returns: the interpreter only calls `_get_native_delegate_pointer()`."""

    def __init__(self, device: str, options: dict):
        self.device = device
        self.options = options
        self.prepare_calls = 0
        self._prepare = _PREPARE(self._on_prepare)  # keep the callback alive as long as the delegate
        self._struct = TfLiteDelegate(None, self._prepare, None, None, None, 0, None)

    def _on_prepare(self, context, delegate) -> int:
        self.prepare_calls += 1
        return 0  # kTfLiteOk, no nodes replaced

    def _get_native_delegate_pointer(self) -> int:
        return ctypes.addressof(self._struct)


@dataclass
class FakeEdgeTpu:
    """`devices` are the Edge TPUs plugged in ("usb:0", "pci:0", ...); `installed` is libedgetpu1-std."""

    devices: list[str] = field(default_factory=lambda: ["usb:0"])
    installed: bool = True
    delegates: list[FakeDelegate] = field(default_factory=list)
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def _match(self, wanted: str | None) -> str | None:
        # libedgetpu's device strings: "" (any), "usb" / "pci" (first of the kind), "usb:N" / "pci:N", ":N".
        if not wanted:
            return self.devices[0] if self.devices else None
        if wanted in ("usb", "pci"):
            return next((d for d in self.devices if d.startswith(wanted + ":")), None)
        if wanted.startswith(":"):
            index = int(wanted[1:])
            return self.devices[index] if index < len(self.devices) else None
        return wanted if wanted in self.devices else None

    def load_delegate(self, library, options=None):
        options = dict(options or {})
        self.calls.append((library, options))
        if library != LIBRARY or not self.installed:
            raise OSError(f"{library}: cannot open shared object file: No such file or directory")
        device = self._match(options.get("device"))
        if device is None:
            raise ValueError(f"Failed to load delegate from {library}\n")
        delegate = FakeDelegate(device, options)
        self.delegates.append(delegate)
        return delegate

    def install(self, monkeypatch) -> FakeEdgeTpu:
        """Replace `load_delegate` in the module of every TFLite runtime that imports here."""
        for module_name, _ in tflite.RUNTIMES.values():
            if module_name.startswith("tensorflow"):
                continue  # importing TensorFlow just to patch it would cost seconds; LiteRT is the device runtime
            try:
                module = __import__(module_name, fromlist=["load_delegate"])
            except Exception:
                continue
            monkeypatch.setattr(module, "load_delegate", self.load_delegate)
        return self
