"""Read torch .pth state dicts without torch and without ever running code from the file.

torch's legacy serialization (torchvision's `mobilenet_v2-b0353104.pth`, `efficientnet-lite0-*.pth`)
is five pickles in a row (magic number, protocol version, system info, the state dict, the storage
keys) followed by the raw storages; newer files are a zip of data.pkl + storages. We read the
pickles with a restricted unpickler that knows only OrderedDict, the tensor-rebuild function and
storage types, each mapped to our own inert stand-in: any other global makes the read fail.
We chose this over `torch.load(weights_only=True)` so that training needs no torch at all.

Nothing a file says is allocated before it is checked against what the file really holds (issue 24,
item 8): the file is read once, every length in a pickle is checked against the bytes that follow it
(pickletools walks it before it is unpickled), a storage or zip member may not claim more bytes than
the file has, and the tensors built from it may not take more than EXPANSION times its size in all
(a view with stride 0 could otherwise ask for a gigabyte from a 392-byte file). A pickle may make at
most MAX_OPERATIONS objects, and state dicts nested deeper than MAX_DEPTH are refused. Any failure is
a one-line WeightsError.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
EXPANSION = 2  # tensors may take twice the file: tied weights share one storage
MAX_DEPTH = 32  # a state dict is two or three levels deep
# Each pickle operation makes at most one object (~100 bytes); a state dict of 5,000 tensors needs
# about 75,000 of them.
MAX_OPERATIONS = 500_000

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


class _Budget:
    """Bytes the reader may still allocate, from the file's real size."""

    def __init__(self, limit: int, what: str):
        self.left, self.limit, self.what = limit, limit, what

    def take(self, n: int) -> None:
        if n > self.left:
            raise pickle.UnpicklingError(
                f"asks for more than {self.limit:,} bytes of {self.what} ({EXPANSION} x the file's size)"
                if self.what == "tensors"
                else f"asks for more than the {self.limit:,} bytes of {self.what}"
            )
        self.left -= n


def _view(ref: _TensorRef, flat: np.ndarray, budget: _Budget) -> np.ndarray:
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
        return np.empty(size, flat.dtype.newbyteorder("="))
    last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= len(flat):
        raise pickle.UnpicklingError(
            f"tensor of size {list(size)} at offset {ref.offset} needs element {last} of a storage of {len(flat)}"
        )
    budget.take(math.prod(size) * flat.dtype.itemsize)  # before the copy: a stride 0 repeats elements
    itemsize = flat.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=size, strides=[s * itemsize for s in stride]
    ).astype(flat.dtype.newbyteorder("="))


def _walk(obj, depth: int = 0):
    """Every value of nested dicts, depth first; refuses nesting deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise pickle.UnpicklingError(f"nested more than {MAX_DEPTH} levels deep: not a state dict")
    for v in obj.values():
        if isinstance(v, dict):
            yield from _walk(v, depth + 1)
        else:
            yield v


def _materialise(obj, blobs: dict[str, np.ndarray], budget: _Budget, depth: int = 0):
    if isinstance(obj, dict):
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"nested more than {MAX_DEPTH} levels deep: not a state dict")
        return collections.OrderedDict((k, _materialise(v, blobs, budget, depth + 1)) for k, v in obj.items())
    if isinstance(obj, _TensorRef):
        if obj.storage.key not in blobs:
            raise pickle.UnpicklingError(
                f"tensor refers to storage {obj.storage.key!r}, which the file lacks"
            )
        return _view(obj, blobs[obj.storage.key], budget)
    return obj


def _storage_refs(state) -> dict[str, _StorageRef]:
    """Every tensor storage a state dict (nested dicts) refers to, by key."""
    if not isinstance(state, dict):
        return {}
    return {v.storage.key: v.storage for v in _walk(state) if isinstance(v, _TensorRef)}


def _unpickle(data: bytes, start: int) -> tuple[object, int]:
    """The pickle at `start` of `data`, and where it ends. pickletools walks it first: a length
    that runs past the data is an error there, before the unpickler allocates it."""
    stream = io.BytesIO(data)
    stream.seek(start)
    for n, _ in enumerate(pickletools.genops(stream)):
        if n >= MAX_OPERATIONS:
            raise pickle.UnpicklingError(
                f"a pickle of more than {MAX_OPERATIONS:,} operations: not a state dict"
            )
    end = stream.tell()
    stream.seek(start)
    return _RestrictedUnpickler(stream).load(), end


def _read_legacy(data: bytes) -> dict:
    at = 0
    loaded = []
    for _ in range(5):  # magic, protocol version, sys info, the state dict, the storage keys
        obj, at = _unpickle(data, at)
        loaded.append(obj)
        if len(loaded) == 1 and obj != _LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a torch legacy file (bad magic number)")
    state, keys = loaded[3], loaded[4]
    refs = _storage_refs(state)
    blobs = {}
    for key in keys:
        (numel,) = np.frombuffer(data, "<i8", 1, at)
        dtype = np.dtype(refs[key].dtype).newbyteorder("<") if key in refs else np.dtype(np.uint8)
        at += 8
        if not 0 <= numel <= (len(data) - at) // dtype.itemsize:
            raise pickle.UnpicklingError(
                f"storage {key!r} claims {int(numel):,} elements; the file has {len(data) - at:,} bytes left"
            )
        blobs[key] = np.frombuffer(data, dtype, int(numel), at)  # a view of the file's bytes
        at += int(numel) * dtype.itemsize
    return _materialise(state, blobs, _Budget(EXPANSION * len(data), "tensors"))


def _member(zf: zipfile.ZipFile, name: str, budget: _Budget) -> bytes:
    """A member of the archive, decompressed no further than the budget (a zip bomb stops there)."""
    with zf.open(name) as fh:
        data = fh.read(budget.left + 1)
    budget.take(len(data))
    return data


def _read_zip(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        if not names:
            raise pickle.UnpicklingError("an empty zip archive")
        root = names[0].split("/")[0]
        read = _Budget(len(data), "the file (what its zip members may hold in all)")
        state, _ = _unpickle(_member(zf, f"{root}/data.pkl", read), 0)
        refs = _storage_refs(state)
        blobs = {
            k: np.frombuffer(_member(zf, f"{root}/data/{k}", read), np.dtype(r.dtype).newbyteorder("<"))
            for k, r in refs.items()
        }
    return _materialise(state, blobs, _Budget(EXPANSION * len(data), "tensors"))


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict as {name: numpy array}, read without torch and without executing a pickle."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        data = path.read_bytes()  # once: its real size bounds everything read from it
        state = _read_zip(data) if zipfile.is_zipfile(io.BytesIO(data)) else _read_legacy(data)
    except RecursionError:
        raise WeightsError(f"{path}: not a readable torch state dict (nested too deeply)") from None
    except Exception as exc:  # whatever a hostile file makes the reader raise: the file's fault, one line
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise WeightsError(
            f"{path}: not a readable torch state dict ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a torch state dict (the file holds a {type(state).__name__})")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
