"""Edge TPU pre-flight on real converted models, the compiler-log parser, and `edge compile`.

The compiler itself only exists on x86-64 Debian with Coral's apt repository, so the compile path
runs against a stand-in script that behaves like `edgetpu_compiler` (same options, output names and
log format) and the exit path is tested with no compiler on PATH.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from convert.edgetpu import preflight
from convert.edgetpu_compiler import parse_compiler_log, parse_size
from edge.bundle import CPU_MODEL, EDGETPU_MODEL, Bundle
from edge.cli import main
from tests.tiny_model import TINY_SPEC, load_folder

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]

# Written in the layout edgetpu_compiler 16 prints with --show_operations (numbers are our own).
PARTIAL_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1210 ms.

Input model: model.tflite
Input size: 2.81MiB
Output model: model_edgetpu.tflite
Output size: 3.02MiB
On-chip memory used for caching model parameters: 2.95MiB
On-chip memory remaining for caching model parameters: 4.61MiB
Off-chip memory used for streaming uncached model parameters: 128.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 71
Operation log: model_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 68
Number of operations that will run on CPU: 3

Operator                       Count      Status

CONV_2D                        35         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
ADD                            10         Mapped to Edge TPU
QUANTIZE                       1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
SUB                            1          Mapped to Edge TPU
MUL                            1          Mapped to Edge TPU
FULLY_CONNECTED                2          Mapped to Edge TPU
ELU                            1          Operation not supported
SOFTMAX                        1          More than one subgraph is not supported
QUANTIZE                       1          More than one subgraph is not supported
"""

FULL_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 412 ms.

Input model: model.tflite
Input size: 41.23KiB
Output model: model_edgetpu.tflite
Output size: 97.50KiB
On-chip memory used for caching model parameters: 12.25KiB
On-chip memory remaining for caching model parameters: 7.73MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 7
Operation log: model_edgetpu.log
See the operation log file for individual operation details.

Operator                       Count      Status

QUANTIZE                       2          Mapped to Edge TPU
CONV_2D                        2          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
"""


def test_parse_partial_log():
    log = parse_compiler_log(PARTIAL_LOG)
    assert log["compiler_version"] == "16.0.384591198"
    assert log["compile_ms"] == 1210
    assert log["subgraphs"] == 1
    assert (log["ops_total"], log["ops_on_edgetpu"], log["ops_on_cpu"]) == (71, 68, 3)
    assert log["on_chip_memory_used"] == "2.95MiB"
    assert log["on_chip_memory_used_bytes"] == round(2.95 * 1024**2)
    assert log["off_chip_memory_used_bytes"] == 128
    assert len(log["operators"]) == 11
    assert {"operator": "ELU", "count": 1, "status": "Operation not supported"} in log["operators"]
    assert sum(r["count"] for r in log["operators"]) == 71


def test_parse_full_log_derives_counts_from_the_table():
    log = parse_compiler_log(FULL_LOG)
    assert "Number of operations that will run" not in FULL_LOG
    assert (log["ops_total"], log["ops_on_edgetpu"], log["ops_on_cpu"]) == (7, 7, 0)
    assert log["off_chip_memory_used_bytes"] == 0
    assert log["on_chip_memory_remaining_bytes"] == round(7.73 * 1024**2)


def test_parse_size():
    assert parse_size("1.00KiB") == 1024 and parse_size("0.00B") == 0 and parse_size("n/a") is None


def test_tiny_int8_bundle_maps_completely(tiny_bundle):
    report = preflight((tiny_bundle / CPU_MODEL).read_bytes())
    assert report.fully_mappable, report.unsupported()
    assert report.mapped == len(report.ops) > 0
    assert report.verdict() == f"pre-flight: all {len(report.ops)} ops map to the Edge TPU"


def _tiny_keras_with(layer, n_classes=5):
    import keras

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2)(x)
    x = layer(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x))


@pytest.fixture(scope="module")
def calib(synthetic_split):
    x, _, _ = load_folder(synthetic_split / "train", TINY_SPEC)
    return x[::4]


def test_unsupported_op_partitions_the_rest_to_cpu(calib):
    import keras

    from convert.tflite_export import to_tflite

    keras.utils.set_random_seed(0)
    report = preflight(to_tflite(_tiny_keras_with(keras.layers.LeakyReLU(negative_slope=0.1)), "int8", calib))
    first = report.first_cpu
    assert first is not None and first.op == "LEAKY_RELU"
    assert "not in the Edge TPU's supported operations" in first.reasons[0]
    assert report.mapped == first.index and 0 < report.mapped < len(report.ops)
    cpu_rows = [line for line in report.table() if line.endswith("Runs on CPU")]
    # everything from the LeakyReLU on runs on the CPU, including supported ops after it
    assert any(line.startswith("LEAKY_RELU") for line in cpu_rows) and any(
        line.startswith("CONV_2D") for line in cpu_rows
    )
    assert f"from op {first.index} (LEAKY_RELU" in report.verdict()


def test_float_and_dynamic_models_are_refused(calib, tiny_float):
    import keras

    from convert.tflite_export import to_tflite

    model = keras.models.load_model(tiny_float / "float.keras", compile=False)
    float_report = preflight(to_tflite(model, "float32"))
    assert float_report.mapped == 0
    assert "float32, not int8/uint8" in float_report.first_cpu.reasons[0]
    dynamic = preflight(to_tflite(model, "int8", calib, static_batch=None))
    assert not dynamic.fully_mappable
    assert any("dynamic shape" in r for v in dynamic.unsupported() for r in v.reasons)


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize(
    ("name", "ops"),
    [
        ("wbc-detector-int8", 62),
        ("mobilenetv2-int8", 70),
        ("differential-int8", 71),
        ("efficientnetb0-int8", 242),
    ],
)
def test_committed_bundles_map_completely_as_their_model_cards_say(name, ops, capsys):
    """`edge compile models/NAME --preflight`, the command each model card quotes: every op maps to the
    Edge TPU, none is left to the CPU, and exit 0 (8 would mean some op falls back)."""
    code, out, _ = _run(["compile", str(ROOT / "models" / name), "--preflight"], capsys)
    assert code == 0, out
    assert out.strip().splitlines()[-1] == f"pre-flight: all {ops} ops map to the Edge TPU"
    assert "Mapped to Edge TPU" in out and "CPU" not in out


def test_compile_without_compiler_exits_6_with_one_line(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler anywhere
    code, out, err = _run(["compile", str(tiny_bundle)], capsys)
    assert code == 6
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "edgetpu-compiler" in lines[0] and "x86-64 Debian" in lines[0] and "pre-flight: all" in lines[0]
    assert "Mapped to Edge TPU" in out
    assert EDGETPU_MODEL not in Bundle.load(tiny_bundle).manifest.files


def test_preflight_only_exit_codes(tiny_bundle, tiny_float, tmp_path, capsys):
    code, out, _ = _run(["compile", str(tiny_bundle), "--preflight"], capsys)
    assert code == 0 and "pre-flight: all" in out
    # a float32 bundle: nothing maps, --preflight says so with exit 8
    import keras

    from convert.tflite_export import bundle_from_tflite, to_tflite

    model = keras.models.load_model(tiny_float / "float.keras", compile=False)
    bundle_from_tflite(
        tmp_path / "f32", to_tflite(model, "float32"), Bundle.load(tiny_bundle).labels, TINY_SPEC
    )
    code, out, _ = _run(["compile", str(tmp_path / "f32"), "--preflight", "-v"], capsys)
    assert code == 8
    assert "0 of" in out and "float32" in out


FAKE_COMPILER = '''\
#!{python}
"""Stand-in for edgetpu_compiler 16: same options, output names and log layout."""
import argparse, pathlib, shutil, sys
p = argparse.ArgumentParser()
p.add_argument("-s", "--show_operations", action="store_true")
p.add_argument("-o", "--out_dir", default=".")
p.add_argument("-t", "--timeout_sec", type=int, default=180)
p.add_argument("model")
a = p.parse_args()
src = pathlib.Path(a.model)
out = pathlib.Path(a.out_dir) / (src.stem + "_edgetpu.tflite")
shutil.copyfile(src, out)
log = open({log!r}).read()
(pathlib.Path(a.out_dir) / (src.stem + "_edgetpu.log")).write_text(log)
sys.stdout.write(log if a.show_operations else log.split("Operator ")[0])
'''


def test_compile_adds_edgetpu_model_and_parsed_log(tiny_bundle, tmp_path, monkeypatch, capsys):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    (tmp_path / "full.log").write_text(FULL_LOG)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(FAKE_COMPILER.format(python=sys.executable, log=str(tmp_path / "full.log")))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    code, out, err = _run(["compile", str(bundle_dir)], capsys)
    assert code == 0, err
    assert "7 of 7 ops on the Edge TPU" in out
    bundle = Bundle.load(bundle_dir)  # verifies the new file's hash
    assert EDGETPU_MODEL in bundle.manifest.files
    assert bundle.model_path(edgetpu=True).read_bytes() == (bundle_dir / CPU_MODEL).read_bytes()
    edgetpu = bundle.manifest.edgetpu
    assert edgetpu["compiler"]["ops_on_edgetpu"] == 7 and edgetpu["compiler"]["subgraphs"] == 1
    assert edgetpu["preflight"]["fully_mappable"] is True
    assert np.isclose(edgetpu["compiler"]["on_chip_memory_used_bytes"], 12.25 * 1024)


def test_compiler_failure_is_one_line(tiny_bundle, tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(
        textwrap.dedent("""\
        #!/bin/sh
        echo "Edge TPU Compiler version 16.0.384591198"
        echo "Invalid model: $6"
        echo "Model not quantized"
        exit 1
        """)
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    code, _, err = _run(["compile", str(tiny_bundle)], capsys)
    assert code == 7
    assert err.strip().splitlines() == [err.strip()] and "Model not quantized" in err
