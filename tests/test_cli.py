"""The `edge` CLI: help, version, one-line errors, and the device install without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from edge import __version__

ROOT = Path(__file__).resolve().parents[1]


def edge(*args, python=sys.executable, env=None):
    return subprocess.run(
        [python, "-m", "edge.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_help_lists_every_command():
    result = edge("--help")
    assert result.returncode == 0
    for name in ("train", "quantize", "compile", "classify", "eval", "run", "bench", "doctor", "info"):
        assert name in result.stdout


def test_version():
    assert __version__ in edge("--version").stdout


def test_edge_help_does_not_import_tensorflow():
    # every command, the host plugins (convert/commands) included: importing one must not import TensorFlow
    code = "import sys; from edge.cli import cli; [cli.get_command(None, c) for c in cli.list_commands(None)]; import edge.preprocess, edge.bundle, edge.predict; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_missing_bundle_is_one_line():
    result = edge("info", "/nonexistent/bundle")
    assert result.returncode == 3
    assert result.stderr.strip() == "error: /nonexistent/bundle: bundle not found"


@pytest.mark.slow
def test_device_only_venv_has_no_tensorflow(tmp_path_factory):
    """`pip install .[device]` gives a working `edge` without TensorFlow; training says which extra to install."""
    env_dir = tmp_path_factory.mktemp("devvenv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "--quiet", f"{ROOT}[device]"], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    tmp = tmp_path_factory.mktemp("cwd")  # run outside the repo, so the installed package is what runs
    check = subprocess.run(
        [
            py,
            "-c",
            "import importlib.util as u, sys, edge, edge.preprocess, edge.bundle, edge.predict, edge.runtime.tflite, edge.runtime.cpu_tflite;"
            "print(u.find_spec('tensorflow') is None, 'tensorflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
    )
    assert check.stdout.split() == ["True", "False"], check.stderr
    edge_bin = str(env_dir / "bin" / "edge")
    assert subprocess.run([edge_bin, "--help"], capture_output=True, cwd=tmp, env=env).returncode == 0
    train = subprocess.run([edge_bin, "train", "/x"], capture_output=True, text=True, cwd=tmp, env=env)
    assert train.returncode != 0
    assert len(train.stderr.strip().splitlines()) == 1 and "'train' extra" in train.stderr
    assert "Traceback" not in train.stderr


def _make_dry_run(target: str) -> list[str]:
    """What `make TARGET` would run on a fresh clone (-B: as if nothing were built; -n: run nothing)."""
    if subprocess.run(["make", "--version"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")
    # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL would make this one print "make[1]: Entering
    # directory" lines; the dry run must read as on a fresh shell.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_make_demo_installs_only_the_device_extra_and_test_device_adds_the_rest():
    # Issue 15, defect 9: `make demo` installed TensorFlow (2.7 GB), later the jetson and dev extras too.
    demo = _make_dry_run("demo")
    assert [line for line in demo if "pip install" in line and "-e" in line] == [
        ".venv-device/bin/pip install --quiet -e '.[device]'"
    ]
    assert demo[-1].startswith(".venv-device/bin/edge run ")
    test_device = _make_dry_run("test-device")
    assert ".venv-device/bin/pip install --quiet -e '.[device,jetson,dev]'" in test_device
    assert test_device[-1].startswith(".venv-device/bin/python -m pytest")
    assert any("-e '.[device,jetson,train,dev]'" in line for line in _make_dry_run("test"))  # unchanged
