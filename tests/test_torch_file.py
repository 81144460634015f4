"""The .pth reader against hostile files (issue 15, defect 4): every malformed file is a one-line
error, and no view may reach outside its storage. No torch and no TensorFlow needed: the files are
written here in torch's legacy layout with stand-ins registered as `torch` for the pickler."""

from __future__ import annotations

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
