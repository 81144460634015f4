"""The runtime adapters: CPU TFLite (LiteRT) against the training-side model, and the Edge TPU path
through a faithful double of libedgetpu (tests/fake_edgetpu.py)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.batch import classify_paths
from edge.bundle import EDGETPU_MODEL, Bundle, write_bundle
from edge.dataset import images_in
from edge.errors import BundleError, RuntimeUnavailableError
from edge.predict import Classifier
from edge.preprocess import preprocess_file
from edge.runtime import dequantize, open_backend
from edge.runtime.edgetpu import EdgeTpuProbe, diagnose, probe
from edge.runtime.tflite import import_runtime, usable_cores
from tests.fake_edgetpu import LIBRARY, FakeEdgeTpu


@pytest.fixture(scope="module")
def val_files(synthetic_split) -> list[Path]:
    return images_in(synthetic_split / "val")


@pytest.fixture
def tpu_bundle(tiny_bundle, tmp_path) -> Bundle:
    """The tiny bundle plus a model_edgetpu.tflite. No edgetpu_compiler here, so it is the CPU model:
    what the double's device computes is then exactly what a correct compilation would."""
    root = tmp_path / "tpu"
    shutil.copytree(tiny_bundle, root)
    bundle = Bundle.load(root)
    bundle.manifest.edgetpu = {"compiler": "none (test copy of model.tflite)"}
    write_bundle(root, {EDGETPU_MODEL: (root / "model.tflite").read_bytes()}, bundle.manifest)
    return Bundle.load(root)


def test_cpu_path_matches_the_training_side_float_model(tiny_bundle, val_files):
    bundle = Bundle.load(tiny_bundle)
    results = list(classify_paths(Classifier.open(bundle), val_files))
    int8 = np.stack([[r.prediction.probabilities[name] for name in bundle.labels] for r in results])
    # The float model's own outputs on these images, stored by scripts/make_test_bundle.py.
    float_probs = np.load(tiny_bundle / "float_val_probs.npy")
    # int8 rounding may only flip near-ties; everywhere else the labels agree and the numbers are close.
    ordered = np.sort(float_probs, 1)
    clear = ordered[:, -1] - ordered[:, -2] > 0.05
    assert clear.sum() >= len(val_files) // 2
    assert (int8.argmax(1) == float_probs.argmax(1))[clear].all()
    assert np.abs(int8 - float_probs).max() < 0.06
    assert all(r.prediction.confidence == row.max() for r, row in zip(results, int8, strict=True))


def test_batches_give_the_same_numbers_as_single_images(tiny_bundle, val_files):
    bundle = Bundle.load(tiny_bundle)
    backend = open_backend(bundle, threads=1)
    x = np.stack([preprocess_file(f, bundle.preprocess_spec) for f in val_files[:12]])
    batched = backend.run(x)
    single = np.concatenate([backend.run(x[i : i + 1]) for i in range(len(x))])
    assert batched.shape == (12, len(bundle.labels))
    np.testing.assert_array_equal(batched, single)
    np.testing.assert_allclose(batched.sum(1), 1.0, atol=0.03)


def test_runtime_choice_threads_and_xnnpack(tiny_bundle, val_files):
    bundle = Bundle.load(tiny_bundle)
    default = open_backend(bundle)
    assert default.threads == usable_cores()
    info = default.describe()
    assert info["runtime"] == "litert" and info["delegate"] == "xnnpack"
    plain = open_backend(bundle, runtime="litert", threads=1, xnnpack=False)
    assert plain.describe()["delegate"] == "none" and plain.threads == 1
    x = np.stack([preprocess_file(f, bundle.preprocess_spec) for f in val_files[:4]])
    np.testing.assert_allclose(plain.run(x), default.run(x), atol=2 / 256)


def test_forcing_a_runtime_that_is_absent_or_unknown_names_it(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'onnx'"):
        open_backend(bundle, runtime="onnx")
    if importlib.util.find_spec("tflite_runtime") is None:
        with pytest.raises(RuntimeUnavailableError, match="tflite-runtime: ModuleNotFoundError.*pip install"):
            open_backend(bundle, runtime="tflite-runtime")
    assert import_runtime("litert").name == "litert"


def test_dequantize_uses_int64_like_pycoral():
    raw = np.array([0, 128, 255], np.uint8)
    np.testing.assert_allclose(dequantize(raw, 1 / 256, 0), [0.0, 0.5, 255 / 256])
    # uint8 minus a zero point would wrap around in uint8 arithmetic; int64 does not.
    np.testing.assert_allclose(dequantize(raw, 0.5, 200), [-100.0, -36.0, 27.5])
    np.testing.assert_allclose(dequantize(np.array([-128, 127], np.int8), 0.1, -128), [0.0, 25.5], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_dequantize_small_python_path_gives_the_numpy_bits(dtype):
    # One frame's scores take a plain-Python path; it must give exactly the float32 values of the
    # NumPy path used for batches, for every raw value and awkward scales.
    info = np.iinfo(dtype)
    raw = np.arange(info.min, info.max + 1, dtype=dtype)
    for scale, zero in ((1 / 256, 0), (0.00390625, -128), (0.1, 3), (0.0123456789, 17)):
        expected = (scale * (raw.astype(np.int64) - zero)).astype(np.float32)
        got = np.concatenate([dequantize(chunk, scale, zero) for chunk in np.split(raw, 8)])  # 32 each
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32))
        assert dequantize(raw[:5].reshape(1, 5), scale, zero).shape == (1, 5)


# ---- Edge TPU, through the double ----------------------------------------------------------------


def test_edgetpu_backend_runs_the_edgetpu_model_through_the_delegate(tpu_bundle, val_files, monkeypatch):
    fake = FakeEdgeTpu(devices=["usb:0"]).install(monkeypatch)
    backend = open_backend(tpu_bundle, "edgetpu", device="usb:0")
    assert fake.calls == [(LIBRARY, {"device": "usb:0"})]
    assert fake.delegates[0].prepare_calls == 1  # the real interpreter applied the delegate
    x = np.stack([preprocess_file(f, tpu_bundle.preprocess_spec) for f in val_files[:5]])
    probs = backend.run(x)  # fixed-batch model: the backend feeds it one image at a time
    np.testing.assert_array_equal(probs, open_backend(tpu_bundle, "cpu").run(x))
    info = backend.describe()
    assert info["backend"] == "edgetpu" and info["model"] == EDGETPU_MODEL and info["device"] == "usb:0"


def test_edgetpu_default_device_and_classifier(tpu_bundle, val_files, monkeypatch):
    fake = FakeEdgeTpu(devices=["pci:0"]).install(monkeypatch)
    classifier = Classifier.open(tpu_bundle, "edgetpu")
    assert fake.calls[0] == (LIBRARY, {})  # no --device: libedgetpu picks the first one
    results = list(classify_paths(classifier, val_files[:6]))
    assert all(r.ok for r in results) and len(results) == 6


def test_edgetpu_without_a_device_gives_an_actionable_error(tpu_bundle, monkeypatch):
    FakeEdgeTpu(devices=[]).install(monkeypatch)
    with pytest.raises(RuntimeUnavailableError) as err:
        open_backend(tpu_bundle, "edgetpu", device="usb:0")
    message = str(err.value)
    assert "Failed to load delegate from libedgetpu.so.1" in message
    assert "USB3" in message and "power" in message and "edge doctor" in message
    assert "\n" not in message


def test_edgetpu_wrong_device_index_fails_like_no_device(tpu_bundle, monkeypatch):
    FakeEdgeTpu(devices=["usb:0"]).install(monkeypatch)
    with pytest.raises(RuntimeUnavailableError, match="for usb:1"):
        open_backend(tpu_bundle, "edgetpu", device="usb:1")


def test_edgetpu_without_libedgetpu_says_what_to_install(tpu_bundle, monkeypatch):
    FakeEdgeTpu(installed=False).install(monkeypatch)
    with pytest.raises(RuntimeUnavailableError, match="libedgetpu1-std"):
        open_backend(tpu_bundle, "edgetpu")


def test_the_double_fails_exactly_like_the_real_load_delegate_without_libedgetpu():
    if probe().library is not None:
        pytest.skip("libedgetpu is installed here: the real call would reach a device")
    from edge.runtime.edgetpu import _quiet_failed_delegate

    real = import_runtime("litert").load_delegate
    with pytest.raises(OSError) as real_error, _quiet_failed_delegate():  # as the backend calls it
        real(LIBRARY, {"device": "usb:0"})
    with pytest.raises(OSError) as fake_error:
        FakeEdgeTpu(installed=False).load_delegate(LIBRARY, {"device": "usb:0"})
    assert str(fake_error.value) == str(real_error.value)


def test_bundle_without_an_edgetpu_model_is_a_bundle_error(tiny_bundle, monkeypatch):
    FakeEdgeTpu().install(monkeypatch)
    with pytest.raises(BundleError, match="no model_edgetpu.tflite.*edge compile"):
        open_backend(Bundle.load(tiny_bundle), "edgetpu")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_probe_reads_usb_and_pci_edgetpus_from_sysfs(tmp_path):
    _write(tmp_path / "sys/bus/usb/devices/2-1/idVendor", "18d1")
    _write(tmp_path / "sys/bus/usb/devices/2-1/idProduct", "9302")
    _write(tmp_path / "sys/bus/usb/devices/2-1/speed", "480")
    _write(tmp_path / "sys/bus/usb/devices/1-1/idVendor", "046d")  # a webcam
    _write(tmp_path / "sys/bus/usb/devices/1-1/idProduct", "0825")
    _write(tmp_path / "sys/bus/pci/devices/0000:01:00.0/vendor", "0x1ac1")
    _write(tmp_path / "sys/bus/pci/devices/0000:01:00.0/device", "0x089a")
    found = probe(tmp_path)
    kinds = sorted((d.kind, d.usb_speed_mbps) for d in found.devices)
    assert kinds == [("pci", None), ("usb", 480)]
    text = diagnose("usb:0", ValueError("Failed to load delegate from libedgetpu.so.1\n"), found)
    assert "480 Mbit/s" in text and "USB3 port" in text and "udev" in text and "plugdev" in text
    pci_text = diagnose("pci:0", ValueError("Failed to load delegate from libedgetpu.so.1\n"), found)
    assert "gasket" in pci_text and "/dev/apex_0" in pci_text


def test_diagnosis_for_an_inaccessible_apex_node():
    from edge.runtime.edgetpu import EdgeTpuDevice

    found = EdgeTpuProbe(
        devices=[
            EdgeTpuDevice(
                "pci", "Coral PCIe/M.2 Edge TPU", "/dev/apex_0", node="/dev/apex_0", accessible=False
            )
        ],
        library="/usr/lib/libedgetpu.so.1",
        apex_nodes=["/dev/apex_0"],
    )
    text = diagnose("pci:0", ValueError("Failed to load delegate from libedgetpu.so.1\n"), found)
    assert "apex" in text and "usermod" in text


def test_classify_command_on_the_edgetpu_backend(tpu_bundle, val_files, monkeypatch, capsys):
    from edge.cli import main

    fake = FakeEdgeTpu(devices=["usb:0"]).install(monkeypatch)
    with pytest.raises(SystemExit) as done:
        main(
            [
                "classify",
                str(tpu_bundle.path),
                *map(str, val_files[:10]),
                "--backend",
                "edgetpu",
                "--device",
                "usb:0",
                "--json",
            ]
        )
    assert done.value.code == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 10 and "edgetpu" in out.err
    assert len(fake.delegates) == 1  # one interpreter for the device, built once, not per image
    FakeEdgeTpu(devices=[]).install(monkeypatch)
    with pytest.raises(SystemExit) as failed:
        main(["classify", str(tpu_bundle.path), str(val_files[0]), "--backend", "edgetpu"])
    assert failed.value.code == 5
    assert capsys.readouterr().err.startswith("error: Edge TPU delegate failed for any device")
