"""Read torch .pth state dicts without torch and without ever running code from the file.

torch's legacy serialization (torchvision's `mobilenet_v2-b0353104.pth`, `efficientnet-lite0-*.pth`)
is five pickles in a row (magic number, protocol version, system info, the state dict, the storage
keys) followed by the raw storages; newer files are a zip of data.pkl + storages. We read the
pickles with a restricted unpickler that knows only OrderedDict, the tensor-rebuild function and
storage types, each mapped to our own inert stand-in: any other global makes the read fail.
We chose this over `torch.load(weights_only=True)` so that training needs no torch at all.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightsError(EdgeError):
    """A weights file is missing, of the wrong kind, or fails its checksum."""

    exit_code = 2


@dataclass
class _StorageRef:
    key: str
    dtype: type
    numel: int


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name):
        self.dtype = _STORAGE_DTYPES[name]

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("a storage type called as a function: not a state dict")


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows OrderedDict, tensor rebuilds and storage types; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("unknown storage type")
        return _StorageRef(key, storage_type.dtype, numel)


def _view(ref: _TensorRef, flat: np.ndarray) -> np.ndarray:
    """The tensor's view of its storage, after checking that every element it names lies inside the
    storage: as_strided does no bounds check, so a hostile file could otherwise read past the buffer
    or crash the process."""
    size, stride = ref.size, ref.stride
    if len(size) != len(stride) or any(not isinstance(v, int) for v in (*size, *stride, ref.offset)):
        raise pickle.UnpicklingError(f"tensor of size {size} with strides {stride}: malformed")
    if ref.offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise pickle.UnpicklingError(
            f"tensor with a negative size, stride or offset ({size}, {stride}, {ref.offset})"
        )
    if 0 in size:
        return np.empty(size, flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= len(flat):
        raise pickle.UnpicklingError(
            f"tensor of size {list(size)} at offset {ref.offset} needs element {last} of a storage of {len(flat)}"
        )
    itemsize = flat.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=size, strides=[s * itemsize for s in stride]
    ).copy()


def _materialise(obj, blobs: dict[str, np.ndarray]):
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, blobs)) for k, v in obj.items())
    if isinstance(obj, _TensorRef):
        if obj.storage.key not in blobs:
            raise pickle.UnpicklingError(
                f"tensor refers to storage {obj.storage.key!r}, which the file lacks"
            )
        return _view(obj, blobs[obj.storage.key])
    return obj


def _storage_refs(state) -> dict[str, _StorageRef]:
    """Every tensor storage a state dict (nested dicts) refers to, by key."""
    refs: dict[str, _StorageRef] = {}

    def collect(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, _TensorRef):
            refs[obj.storage.key] = obj.storage

    collect(state)
    return refs


def _read_legacy(fh) -> dict:
    def load():
        return _RestrictedUnpickler(fh).load()

    if load() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a torch legacy file (bad magic number)")
    load()  # protocol version
    load()  # sys info (endianness, type sizes)
    state = load()
    refs = _storage_refs(state)
    keys = load()
    blobs = {}
    for key in keys:
        (numel,) = np.frombuffer(fh.read(8), "<i8")
        dtype = np.dtype(refs[key].dtype).newbyteorder("<") if key in refs else np.dtype(np.uint8)
        blobs[key] = np.frombuffer(fh.read(int(numel) * dtype.itemsize), dtype).astype(
            dtype.newbyteorder("=")
        )
    return _materialise(state, blobs)


def _read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if not names:
            raise pickle.UnpicklingError("an empty zip archive")
        root = names[0].split("/")[0]
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(f"{root}/data.pkl")))
        state = unpickler.load()
        refs = _storage_refs(state)
        blobs = {
            k: np.frombuffer(zf.read(f"{root}/data/{k}"), np.dtype(r.dtype).newbyteorder("<"))
            for k, r in refs.items()
        }
    return _materialise(state, blobs)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict as {name: numpy array}, read without torch and without executing a pickle."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if zipfile.is_zipfile(path):
            state = _read_zip(path)
        else:
            with open(path, "rb") as fh:
                state = _read_legacy(fh)
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
        zipfile.BadZipFile,
        MemoryError,
    ) as exc:
        raise WeightsError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a torch state dict (the file holds a {type(state).__name__})")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
