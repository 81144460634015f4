"""The onnx backend: real onnxruntime on the CPU provider against the TFLite model it came from, the
export routes (real tf2onnx, Keras export and onnxruntime.quantization), and the TensorRT / CUDA
provider logic through a faithful double of onnxruntime-gpu (tests/fake_onnx_gpu.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.bench import reference
from edge.bundle import ONNX_MODEL, Bundle
from edge.cli import cli, main
from edge.dataset import images_in, load_labelled
from edge.errors import BundleError, RuntimeUnavailableError
from edge.preprocess import preprocess_file
from edge.runtime import BackendOptionError, open_backend
from edge.runtime.onnx import OnnxTensor, to_model_input, to_scores
from edge.runtime.onnx_providers import PROVIDERS, GpuProbe, parse_providers, probe, select, why_missing

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime (the jetson extra)"
)


@pytest.fixture(scope="module")
def val_images(tiny_bundle, synthetic_split) -> np.ndarray:
    spec = Bundle.load(tiny_bundle).preprocess_spec
    return np.stack([preprocess_file(f, spec) for f in images_in(synthetic_split / "val")])


def assert_same_decisions(got: np.ndarray, want: np.ndarray, step: float = 8 / 256) -> None:
    """Two int8 engines round their requantizations differently (onnxruntime's QDQ kernels and LiteRT's
    move this tiny model's uint8 scores by up to 6 steps of 1/256): scores at most `step` apart, and
    the same class wherever the TFLite model is not near a tie. Two scores that each moved by at most
    `step` can only swap places when they were within two steps of each other. The real measure of
    the export is the reference bundle's agreement on 1,000 real images
    (test_reference_bundle_onnx_agrees_with_its_tflite_model)."""
    assert np.abs(got - want).max() <= step
    top2 = np.sort(want, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] <= 2 * step
    assert ((got.argmax(1) == want.argmax(1)) | near_tie).all()


def _without_onnx(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / ONNX_MODEL).unlink()
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"].pop(ONNX_MODEL)
    manifest["model"].pop("onnx")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


# ---- the backend on the CPU provider, for real ----------------------------------------------------


def test_onnx_backend_computes_what_the_tflite_model_computes(tiny_bundle, val_images):
    bundle = Bundle.load(tiny_bundle)
    onnx = open_backend(bundle, "onnx", providers="cpu", threads=1)
    tflite = open_backend(bundle, "cpu", threads=1)
    got, want = onnx.run(val_images), tflite.run(val_images)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(val_images), len(bundle.labels))
    assert_same_decisions(got, want)
    assert (np.abs(got - want) <= 2 / 256 + 1e-9).mean() > 0.8


def test_batches_give_the_same_numbers_as_single_images(tiny_bundle, val_images):
    backend = open_backend(Bundle.load(tiny_bundle), "onnx", providers="cpu")
    batched = backend.run(val_images[:12])
    single = np.concatenate([backend.run(val_images[i : i + 1]) for i in range(12)])
    np.testing.assert_array_equal(batched, single)


def test_describe_names_runtime_provider_and_input(tiny_bundle):
    info = open_backend(Bundle.load(tiny_bundle), "onnx", providers="tensorrt,cpu", threads=2).describe()
    assert info["backend"] == "onnx" and info["runtime"] == "onnxruntime" and info["threads"] == 2
    assert info["delegate"] == "cpu" and info["providers"][0] == "cpu"
    assert info["input"] == {"shape": [64, 64, 3], "dtype": "uint8", "layout": "NHWC"}
    assert "onnxruntime-gpu not installed" in info["providers_skipped"]["tensorrt"]


def test_input_and_output_handling_in_one_place():
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    nchw_float = OnnxTensor("x", np.dtype(np.float32), (None, 3, 4, 4), "NCHW")
    fed = to_model_input(pixels, nchw_float)
    assert fed.dtype == np.float32 and fed.shape == (2, 3, 4, 4) and fed[1, 2, 3, 1] == pixels[1, 3, 1, 2]
    assert to_model_input(pixels, OnnxTensor("x", np.dtype(np.uint8), (None, 4, 4, 3))) is not None
    raw = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_allclose(to_scores(raw, 1 / 256, 0), [[0.0, 0.5, 255 / 256]])
    assert to_scores(np.array([[0.25]], np.float16), None, None).dtype == np.float32


def test_bundle_verifies_model_onnx_and_says_how_it_was_made(tiny_bundle, tmp_path):
    bundle = Bundle.load(tiny_bundle)
    record = bundle.manifest.model["onnx"]
    assert ONNX_MODEL in bundle.manifest.files and record["file"] == ONNX_MODEL
    assert record["route"] == "tflite" and record["made_from_sha256"] == bundle.sha256
    assert record["tool"]["converter"] == "tf2onnx.convert.from_tflite" and record["tool"]["tf2onnx"]
    assert record["quantization"]["tensorrt_int8_ready"] is False and "tensorrt_note" in record
    copy = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / ONNX_MODEL).read_bytes())
    data[-1] ^= 1
    (copy / ONNX_MODEL).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx: sha256 mismatch"):
        Bundle.load(copy)


def test_a_bundle_without_model_onnx_is_one_line(tiny_bundle, tmp_path, synthetic_split, capsys):
    plain = _without_onnx(tiny_bundle, tmp_path / "plain")
    with pytest.raises(BundleError, match="has no model.onnx.*edge export"):
        open_backend(Bundle.load(plain), "onnx")
    with pytest.raises(SystemExit) as done:
        main(["classify", str(plain), str(images_in(synthetic_split / "val")[0]), "--backend", "onnx"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 3 and len(err.splitlines()) == 1 and err.startswith("error:")


def test_a_missing_onnxruntime_names_the_extra(tiny_bundle, synthetic_split, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(RuntimeUnavailableError, match=r"pip install '\.\[jetson\]'"):
        open_backend(Bundle.load(tiny_bundle), "onnx")
    with pytest.raises(SystemExit) as done:
        main(["classify", str(tiny_bundle), str(images_in(synthetic_split / "val")[0]), "--backend", "onnx"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 5 and len(err.splitlines()) == 1 and ".[jetson]" in err


def test_options_are_parsed_strictly(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(BackendOptionError, match="unknown provider 'gpu'"):
        open_backend(bundle, "onnx", providers="gpu")
    with pytest.raises(BackendOptionError, match="runs on onnxruntime, not --runtime litert"):
        open_backend(bundle, "onnx", runtime="litert")
    with pytest.raises(BackendOptionError, match="trt_precision"):
        open_backend(bundle, "onnx", trt_precision="int4")
    with pytest.raises(BackendOptionError, match="has no option xnnpack"):
        open_backend(bundle, "onnx", xnnpack=False)
    with pytest.raises(
        RuntimeUnavailableError, match="none of the providers cuda can run here: cuda: onnxruntime-gpu"
    ):
        open_backend(bundle, "onnx", providers="cuda")


def test_eval_and_classify_on_the_onnx_backend(tiny_bundle, synthetic_split, tmp_path):
    runner = CliRunner()
    results = {}
    for backend in ("cpu", "onnx"):
        out = tmp_path / f"{backend}.json"
        args = [
            "eval",
            str(tiny_bundle),
            str(synthetic_split / "val"),
            "--backend",
            backend,
            "--json",
            str(out),
        ]
        done = runner.invoke(cli, [*args, "--baseline-images", "0"], catch_exceptions=False)
        assert done.exit_code == 0, done.output
        results[backend] = json.loads(out.read_text())
    assert results["onnx"]["runtime"]["backend"] == "onnx" and results["onnx"]["n"] == 40
    lines = {}
    for backend in ("cpu", "onnx"):
        done = runner.invoke(
            cli, ["classify", str(tiny_bundle), str(synthetic_split / "val"), "--backend", backend, "--json"]
        )
        assert done.exit_code == 0, done.output
        lines[backend] = [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]
    # the same label wherever the TFLite model is not near a tie (see assert_same_decisions)
    near_tie = [r["margin"] <= 16 / 256 for r in lines["cpu"]]
    same = [a["label"] == b["label"] for a, b in zip(lines["onnx"], lines["cpu"], strict=True)]
    assert all(s or t for s, t in zip(same, near_tie, strict=True))
    assert abs(results["onnx"]["accuracy"] - results["cpu"]["accuracy"]) <= sum(near_tie) / 40


def test_bench_matrix_puts_cpu_tflite_and_onnx_in_one_table(tiny_bundle, tmp_path):
    out = tmp_path / "m.json"
    args = ["bench", str(tiny_bundle), "--matrix", "--backend", "cpu,onnx", "--threads", "1"]
    done = CliRunner().invoke(
        cli, [*args, "--runs", "3", "--warmup", "0", "--json", str(out)], catch_exceptions=False
    )
    assert done.exit_code == 0, done.output
    runs = json.loads(out.read_text())["matrix"]
    assert [r["context"]["backend"] for r in runs] == ["cpu", "onnx"]
    onnx = runs[1]
    assert onnx["invoke_scope"] == "session.run()" and onnx["bundle"]["model_file"] == ONNX_MODEL
    assert onnx["context"]["runtime"] == "onnxruntime" and onnx["backend"]["delegate"] == "cpu"
    table = [line for line in done.output.splitlines() if line.startswith(Path(tiny_bundle).name)]
    assert len(table) == 2 and "xnnpack" in table[0] and "onnxruntime" in table[1]
    # a default --matrix includes onnx where onnxruntime is installed
    done = CliRunner().invoke(
        cli, ["bench", str(tiny_bundle), "--matrix", "--threads", "1", "--runs", "2", "--warmup", "0"]
    )
    assert done.exit_code == 0 and "onnxruntime" in done.output


# ---- TensorRT and CUDA, through the double ---------------------------------------------------------


def test_tensorrt_first_with_its_cache_and_precision(tiny_bundle, val_images, tmp_path, monkeypatch):
    from tests.fake_onnx_gpu import FakeGpuOnnxRuntime

    fake = FakeGpuOnnxRuntime().install(monkeypatch)
    bundle = Bundle.load(tiny_bundle)
    backend = open_backend(bundle, "onnx", trt_cache=str(tmp_path / "trt"), device="cuda:1")
    (session,) = fake.sessions
    names = [p[0] for p in session["providers"]]
    assert names == [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    trt, cuda = session["providers"][0][1], session["providers"][1][1]
    cache = tmp_path / "trt" / f"{bundle.manifest.files[ONNX_MODEL][:16]}-int8"
    assert (
        trt["trt_engine_cache_enable"] is True
        and trt["trt_engine_cache_path"] == str(cache)
        and cache.is_dir()
    )
    assert trt["trt_int8_enable"] is True and trt["trt_fp16_enable"] is True and trt["device_id"] == 1
    assert cuda == {"device_id": 1} and session["kwargs"]["enable_fallback"] == 0
    info = backend.describe()
    assert info["delegate"] == "tensorrt int8" and info["providers"] == ["tensorrt", "cuda", "cpu"]
    assert info["trt_cache"] == str(cache)
    assert backend.run(val_images[:3]).shape == (3, len(bundle.labels))  # the real CPU session underneath

    open_backend(
        bundle, "onnx", providers="tensorrt,cpu", trt_precision="fp16", trt_cache=str(tmp_path / "trt")
    )
    trt = fake.sessions[-1]["providers"][0][1]
    assert trt["trt_int8_enable"] is False and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_path"].endswith("-fp16")


def test_a_provider_that_does_not_start_is_reported(tiny_bundle, tmp_path, monkeypatch):
    from tests.fake_onnx_gpu import FakeGpuOnnxRuntime

    FakeGpuOnnxRuntime(failing=("TensorrtExecutionProvider",)).install(monkeypatch)
    bundle = Bundle.load(tiny_bundle)
    backend = open_backend(bundle, "onnx", providers="tensorrt,cuda", trt_cache=str(tmp_path))
    info = backend.describe()
    assert info["delegate"] == "cuda" and "tensorrt" in info["providers_skipped"]
    with pytest.raises(RuntimeUnavailableError, match="none of the providers tensorrt started.*add cpu"):
        open_backend(bundle, "onnx", providers="tensorrt", trt_cache=str(tmp_path))


def test_why_a_gpu_provider_is_missing(tmp_path):
    cpu_build = GpuProbe(wheel="onnxruntime", wheel_version="1.32.0")
    cpu_only = [PROVIDERS["cpu"]]
    assert why_missing(PROVIDERS["cuda"], cpu_only, cpu_build).startswith("onnxruntime-gpu not installed")
    assert "NVIDIA's onnxruntime-gpu wheel" in why_missing(
        PROVIDERS["tensorrt"], cpu_only, GpuProbe(wheel="onnxruntime", jetpack="R36 (release)")
    )
    gpu_wheel = GpuProbe(wheel="onnxruntime-gpu", wheel_version="1.23.0")
    everything = [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    assert why_missing(PROVIDERS["cuda"], everything, gpu_wheel).startswith("no CUDA device")
    on_jetson = GpuProbe("onnxruntime-gpu", "1.23.0", ["/dev/nvhost-ctrl-gpu"], "R36", "libcudart.so.12")
    assert why_missing(PROVIDERS["cuda"], everything, on_jetson) is None
    assert "libnvinfer" in why_missing(PROVIDERS["tensorrt"], everything, on_jetson)
    assert why_missing(PROVIDERS["cpu"], cpu_only, cpu_build) is None
    # a fake Jetson tree: the Tegra GPU node and the L4T release file are found
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvhost-ctrl-gpu").touch()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3\n")
    found = probe(tmp_path)
    assert found.device_nodes == ["/dev/nvhost-ctrl-gpu"] and found.jetpack.startswith("R36")
    chosen, skipped = select(parse_providers("tensorrt,cuda,cpu"), cpu_only, cpu_build)
    assert chosen == [PROVIDERS["cpu"]] and set(skipped) == {PROVIDERS["tensorrt"], PROVIDERS["cuda"]}


def test_doctor_lists_providers_and_why_the_gpu_ones_are_missing(tiny_bundle):
    from edge.commands.doctor import check_onnx

    checks = {c.area: c for c in check_onnx(wanted=True)}
    assert checks["onnxruntime"].status == "ok" and "cpu" in checks["onnx providers"].detail
    assert "onnxruntime-gpu not installed" in checks["onnx tensorrt"].detail
    done = CliRunner().invoke(cli, ["doctor", str(tiny_bundle), "--backend", "onnx"])
    assert (
        "onnx cuda" in done.output and "bundle runs" in done.output and "onnx on onnxruntime" in done.output
    )


def test_published_jetson_numbers_match_their_board_and_provider():
    orin = {"machine": "aarch64", "device": "NVIDIA Jetson Orin Nano Developer Kit"}
    cuda = reference.applicable(orin, "onnx", "mobilenetv2", 224, "cuda")
    assert [r.low_ms for r in cuda] == [7.87] and "not measured here" in cuda[0].caveat
    assert [r.low_ms for r in reference.applicable(orin, "onnx", "mobilenetv2", 224, "cpu")] == [17.3]
    assert reference.applicable(orin, "onnx", "mobilenetv2", 224, "tensorrt") == []
    nano = {"machine": "aarch64", "device": "NVIDIA Jetson Nano Developer Kit"}
    assert [r.board for r in reference.applicable(nano, "onnx", "mobilenetv2", 224, "cuda")] == [
        "Jetson Nano, GPU (OpenCV DNN, CUDA FP32)"
    ]
    assert all(r.source for r in reference.REFERENCES if r.tag.startswith("jetson"))


@pytest.mark.slow
def test_a_venv_with_only_device_and_jetson_runs_onnx_without_tensorflow(
    tiny_bundle, synthetic_split, tmp_path
):
    """`pip install '.[device,jetson]'`: the onnx backend classifies, TensorFlow is not there, and the
    export (a training-host command) says which extra it needs."""
    import os
    import subprocess
    import venv

    root = Path(__file__).resolve().parents[1]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, edge_bin = str(env_dir / "bin" / "python"), str(env_dir / "bin" / "edge")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "--quiet", f"{root}[device,jetson]"], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cwd = tmp_path  # outside the repo, so the installed package is what runs
    image = str(images_in(synthetic_split / "val")[0])

    def run(*args):
        return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env)

    check = run(
        py,
        "-c",
        "import importlib.util as u; print(u.find_spec('tensorflow') is None, u.find_spec('onnxruntime') is not None)",
    )
    assert check.stdout.split() == ["True", "True"], check.stderr
    done = run(edge_bin, "classify", str(tiny_bundle), image, "--backend", "onnx", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["label"] in Bundle.load(tiny_bundle).labels
    assert "onnx, onnxruntime" in done.stderr
    export = run(edge_bin, "export", str(tiny_bundle), "--format", "onnx")
    assert export.returncode == 4 and "'train' extra" in export.stderr and "Traceback" not in export.stderr


# ---- the export routes (training host) -------------------------------------------------------------


@pytest.mark.train
def test_export_from_the_bundles_tflite_reproduces_its_outputs(tiny_bundle, tmp_path, val_images):
    plain = _without_onnx(tiny_bundle, tmp_path / "plain")
    done = CliRunner().invoke(cli, ["export", str(plain), "--format", "onnx"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    bundle = Bundle.load(plain)
    record = bundle.manifest.model["onnx"]
    assert record["route"] == "tflite" and record["dynamic_batch"] is True
    assert record["output"]["scale"] == bundle.manifest.output.scale
    onnx = open_backend(bundle, "onnx", providers="cpu").run(val_images)
    tflite = open_backend(bundle, "cpu").run(val_images)
    assert_same_decisions(onnx, tflite)


@pytest.mark.train
def test_export_from_keras_quantizes_on_the_calibration_images(tiny_float, synthetic_split, tmp_path):
    from convert.export import ExportRequest, export

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_float, copy)
    request = ExportRequest(
        copy, run=copy / "float.keras", calib_dir=synthetic_split / "train", eval_dir=synthetic_split / "val"
    )
    request.calib_count = 40
    result = export(request)
    record = result.bundle.manifest.model["onnx"]
    assert record["route"] == "keras" and record["made_from"].endswith("float.keras")
    assert record["quantization"]["tensorrt_int8_ready"] is True  # symmetric: every zero point 0
    assert record["calibration"]["count"] == 40 and record["calibration"]["fingerprint"]
    assert record["input"]["dtype"] == "float32" and "keras" in record["tool"]
    vs_float, vs_tflite = record["fidelity"]
    assert vs_float["against"] == "float" and vs_tflite["against"] == "tflite-int8"
    assert vs_float["n"] == 40 and len(vs_float["per_class"]) == 5
    assert vs_float["agreement"] >= 0.85
    backend = open_backend(result.bundle, "onnx", providers="cpu")
    assert backend.describe()["input"]["dtype"] == "float32"  # the device casts edge.preprocess's uint8
    ev = load_labelled(synthetic_split / "val", result.bundle.preprocess_spec, result.bundle.labels)
    onnx_acc = (backend.run(ev.images).argmax(1) == ev.y).mean()
    assert onnx_acc == pytest.approx(vs_float["onnx_accuracy"])


@pytest.mark.train
def test_quantize_format_onnx_writes_both_models_from_the_same_calibration(
    tiny_float, synthetic_split, tmp_path
):
    out = tmp_path / "both"
    args = ["quantize", str(tiny_float / "float.keras"), "--calib", str(synthetic_split / "train")]
    args += [
        "--eval",
        str(synthetic_split / "val"),
        "--out",
        str(out),
        "--calib-count",
        "40",
        "--format",
        "onnx",
    ]
    done = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    bundle = Bundle.load(out)
    record = bundle.manifest.model["onnx"]
    assert {"model.tflite", ONNX_MODEL} <= set(bundle.manifest.files)
    # the same calibration images as the TFLite conversion, by fingerprint
    assert record["calibration"]["same_images_as_tflite"] is True
    assert record["command"].endswith("--format onnx") and record["route"] == "keras"
    assert [r["against"] for r in record["fidelity"]] == ["float", "tflite-int8"]
    assert "onnx int8 vs float" in done.output


# ---- the reference bundle on real data ---------------------------------------------------------------


@pytest.mark.realdata
def test_reference_bundle_onnx_agrees_with_its_tflite_model(realdata):
    root = Path(__file__).resolve().parents[1] / "models" / "mobilenetv2-int8"
    bundle = Bundle.load(root)
    ev = load_labelled(realdata / "blood-5class" / "val", bundle.preprocess_spec, bundle.labels)
    onnx = open_backend(bundle, "onnx", providers="cpu")
    tflite = open_backend(bundle, "cpu")
    o = np.concatenate([onnx.run(ev.images[i : i + 16]) for i in range(0, len(ev), 16)]).argmax(1)
    t = np.concatenate([tflite.run(ev.images[i : i + 16]) for i in range(0, len(ev), 16)]).argmax(1)
    assert (o == t).mean() >= 0.995
    assert abs((o == ev.y).mean() - (t == ev.y).mean()) <= 0.003


@pytest.mark.train
def test_a_rejecting_bundle_runs_on_onnx_with_its_embedding(tmp_path, synthetic_split):
    """A bundle that labels unlike cells unknown needs the embedding on every backend: model.onnx
    carries it as its second output (named in its metadata) and the onnx backend hands it to rejection."""
    from edge.predict import Classifier

    bundle_dir = tmp_path / "reject"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny-reject-int8", bundle_dir)
    # --eval: model.onnx is scored against the TFLite model's class scores, not its embedding output
    # (the two-output TFLite model once broke the comparison with a shape error)
    done = CliRunner().invoke(
        cli,
        ["export", str(bundle_dir), "--format", "onnx", "--eval", str(synthetic_split / "val")],
        catch_exceptions=False,
    )
    assert done.exit_code == 0, done.output
    assert "agreement" in done.output
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest.model["onnx"]["embedding_output"] is True
    onnx = Classifier.open(bundle, "onnx", providers="cpu", threads=1)
    cpu = Classifier.open(bundle, "cpu", threads=1)
    assert onnx.backend.has_embedding
    images = np.stack(
        [preprocess_file(f, bundle.preprocess_spec) for f in images_in(synthetic_split / "val")]
    )
    debris = (
        np.zeros((4, *images.shape[1:]), np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None, None] * 60
    )
    batch = np.concatenate([images, debris])
    got, want = onnx.classify_tensors(batch), cpu.classify_tensors(batch)
    scores = np.array([[p.rejection_score for p in got], [p.rejection_score for p in want]])
    # the same embedding up to int8 rounding: the same cells unknown but for scores at the threshold
    threshold = bundle.manifest.rejection.threshold
    close = np.abs(scores[1] - threshold) <= 0.2 * threshold
    same = np.array(
        [(a.label == "unknown") == (b.label == "unknown") for a, b in zip(got, want, strict=True)]
    )
    assert (same | close).all()
    assert sum(p.label == "unknown" for p in got[-4:]) >= 3  # the flat fields are unknown on onnx too
