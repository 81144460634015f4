"""The .pth reader against hostile files (issue 15, defect 4): every malformed file is a one-line
error, and no view may reach outside its storage. No torch and no TensorFlow needed: the files are
written here in torch's legacy layout with stand-ins registered as `torch` for the pickler."""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from convert.torch_file import WeightsError, read_torch_state_dict

MAGIC = 0x1950A86A20F9469CFC6C


def _fake_torch(monkeypatch):
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:  # what torch pickles as a global reference
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


class _Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, rebuild, storage, offset, size, stride):
        self.args = (rebuild, storage, offset, size, stride)

    def __reduce__(self):
        rebuild, storage, offset, size, stride = self.args
        return rebuild, (storage, offset, size, stride, False, {})


def _legacy_pth(path, monkeypatch, numel, offset, size, stride, call_storage=False):
    torch, utils = _fake_torch(monkeypatch)
    storage = _Storage("0", numel)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return None

    with open(path, "wb") as fh:
        for obj in (MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, fh, protocol=2)
        if call_storage:  # a storage type called as a function, as a hostile file may do
            Pickler(fh, protocol=2).dump(_Call(torch))
        else:
            Pickler(fh, protocol=2).dump(
                {"w": _Tensor(utils._rebuild_tensor_v2, storage, offset, size, stride)}
            )
        pickle.dump(["0"], fh, protocol=2)
        fh.write(struct.pack("<q", numel))
        fh.write(np.arange(numel, dtype="<f4").tobytes())
    return path


class _Call:
    def __init__(self, torch):
        self.torch = torch

    def __reduce__(self):
        return self.torch.FloatStorage, ()


def test_a_well_formed_file_reads(tmp_path, monkeypatch):
    path = _legacy_pth(tmp_path / "ok.pth", monkeypatch, 6, 0, (2, 3), (3, 1))
    state = read_torch_state_dict(path)
    assert np.array_equal(state["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize(
    "numel, offset, size, stride, message",
    [
        (1, 0, (50_000_000,), (1,), "needs element 49999999 of a storage of 1"),  # was a segfault (rc 139)
        (16, 0, (64,), (1,), "needs element 63 of a storage of 16"),  # read 252 bytes past the buffer
        (16, 12, (2, 3), (3, 1), "needs element 17"),
        (16, -1, (2,), (1,), "negative"),
        (16, 0, (2, 2), (1,), "malformed"),
    ],
)
def test_views_outside_their_storage_are_refused(tmp_path, monkeypatch, numel, offset, size, stride, message):
    path = _legacy_pth(tmp_path / "bad.pth", monkeypatch, numel, offset, size, stride)
    with pytest.raises(WeightsError, match=message):
        read_torch_state_dict(path)


def test_an_empty_zip_and_a_called_storage_type_are_one_line_errors(tmp_path, monkeypatch):
    empty = tmp_path / "empty.pth"
    with zipfile.ZipFile(empty, "w"):
        pass
    with pytest.raises(WeightsError, match="empty zip"):
        read_torch_state_dict(empty)
    called = _legacy_pth(tmp_path / "called.pth", monkeypatch, 4, 0, (4,), (1,), call_storage=True)
    with pytest.raises(WeightsError, match="storage type called as a function"):
        read_torch_state_dict(called)


@pytest.mark.train
def test_weights_import_on_a_hostile_file_is_one_line_and_no_crash(tmp_path, monkeypatch):
    path = _legacy_pth(tmp_path / "oob.pth", monkeypatch, 1, 0, (50_000_000,), (1,))
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "weights", "import", "--from", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"EDGE_CACHE": str(tmp_path), "PATH": ""},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


# Issue 24, item 8: every allocation bounded by the file's real size; every failure a WeightsError.


def _peak_bytes(read) -> int:
    """What `read()` allocated at its peak (Python and NumPy memory, as tracemalloc sees it)."""
    import tracemalloc

    tracemalloc.start()
    try:
        read()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused(path, message: str) -> WeightsError:
    def read():
        with pytest.raises(WeightsError, match=message) as info:
            read_torch_state_dict(path)
        assert "\n" not in str(info.value)

    peak = _peak_bytes(read)
    size = path.stat().st_size
    # the bytes of the file (read once) and what its pickle builds: ~100 bytes an operation at most
    assert peak < 100 * size + 4 * 2**20, f"{peak:,} bytes allocated for a {size:,}-byte file"


def test_a_tiny_file_cannot_ask_for_a_gigabyte(tmp_path, monkeypatch):
    # A 392-byte file asked for a 1 GB array: one element repeated by a stride of 0.
    repeated = _legacy_pth(tmp_path / "stride0.pth", monkeypatch, 1, 0, (250_000_000,), (0,))
    assert repeated.stat().st_size < 500
    _refused(repeated, r"asks for more than [\d,]+ bytes of tensors \(2 x the file's size\)")
    # A storage that claims a gigabyte the file does not hold.
    claims = _legacy_pth(tmp_path / "claims.pth", monkeypatch, 4, 0, (4,), (1,))
    data = bytearray(claims.read_bytes())
    at = len(data) - 4 * 4 - 8
    data[at : at + 8] = struct.pack("<q", 250_000_000)
    claims.write_bytes(bytes(data))
    _refused(claims, "storage '0' claims 250,000,000 elements; the file has 16 bytes left")
    # A pickle whose bytes object says it is a gigabyte long.
    lying = tmp_path / "bytes8.pth"
    lying.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**30) + b"x" * 100 + b".")
    _refused(lying, "expected 1073741824 bytes in a bytes8, but only 101 remain")


def _zip_pth(path, members: dict[str, bytes | int], compression=zipfile.ZIP_DEFLATED):
    """A torch zip: `archive/data.pkl` and storages; an int member is that many zero bytes, written
    compressed in pieces (a zip bomb written without holding it)."""
    with zipfile.ZipFile(path, "w", compression, compresslevel=9) as zf:
        for name, content in members.items():
            with zf.open(f"archive/{name}", "w", force_zip64=True) as fh:
                if isinstance(content, int):
                    for _ in range(content // 2**24):
                        fh.write(bytes(2**24))
                else:
                    fh.write(content)
    return path


def test_a_zip_bomb_is_read_no_further_than_the_file_is_long(tmp_path, monkeypatch):
    # A 2 MB zip asked for 4.2 GB: storages that decompress to far more than the file.
    torch, utils = _fake_torch(monkeypatch)
    storage = _Storage("0", 2**26)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return (
                ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
                if isinstance(obj, _Storage)
                else None
            )

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": _Tensor(utils._rebuild_tensor_v2, storage, 0, (2**26,), (1,))})
    bomb = _zip_pth(tmp_path / "bomb.pth", {"data.pkl": buffer.getvalue(), "data/0": 2**28})
    assert bomb.stat().st_size < 2**20  # 256 MB of storage in a few hundred kB
    _refused(bomb, "asks for more than the [\\d,]+ bytes of the file")


def test_deep_nesting_is_a_weights_error_not_a_recursion_error(tmp_path):
    # Deep nesting gave a bare RecursionError (a traceback). Dicts nested 100,000 deep, written as
    # opcodes: {"k": {"k": ... {}}}.
    depth = 100_000
    deep = tmp_path / "deep.pth"
    key = b"\x8c\x01k"  # SHORT_BINUNICODE "k"
    with zipfile.ZipFile(deep, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + (b"}" + key) * depth + b"}" + b"s" * depth + b".")
    _refused(deep, "nested more than 32 levels deep")


def test_a_pickle_of_a_million_objects_is_refused(tmp_path):
    many = tmp_path / "many.pth"
    many.write_bytes(b"\x80\x02]" + b"]a" * 1_000_000 + b".")  # a list of a million empty lists
    _refused(many, "a pickle of more than 500,000 operations")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x80\x02", b"\x80\x02}q\x00(X", b"PK\x03\x04" + b"\x00" * 40, b"\x80\x02cos\nsystem\n."],
    ids=["empty", "protocol-only", "truncated", "broken-zip", "a-global"],
)
def test_every_failure_is_a_one_line_weights_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        read_torch_state_dict(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))
