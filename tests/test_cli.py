"""The `edge` CLI: help, version, one-line errors, and the device install without TensorFlow."""

from __future__ import annotations

import os
import sqlite3
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


def test_every_command_is_in_one_group_of_the_help():
    # Issue 23: `adapt` was missing from the Device list at the top of `edge --help`.
    from edge.cli import cli

    text = edge("--help").stdout
    groups = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1]
        for line in text.split("Options:")[0].splitlines()
        if line.strip().startswith(("Device:", "Lab:", "Training:"))
    }
    assert set(groups) == {"Device", "Lab", "Training"}
    listed = [w.strip("(),") for words in groups.values() for w in words.split()]
    for name in cli.list_commands(None):
        assert name in listed, f"{name} is in no group of edge --help"
    assert "adapt" in groups["Device"].replace(",", " ").split()


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
    # Issue 23: the default classifier and detector come with the install, found from any folder.
    # The demo's frames come with it too (demo/bccd, with their licence).
    frames = env_dir / "share" / "edge-hemato" / "demo" / "bccd"
    assert (frames / "LICENSE").is_file() and len(list(frames.glob("*.jpg"))) == 12
    run = subprocess.run(
        [edge_bin, "run", "--mode", "field", "--source", f"replay:{frames}", "--loop", "--duration", "5"]
        + ["--http", "off", "--db", "r.db"],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    shipped = env_dir / "share" / "edge-hemato" / "models"
    assert f"detector {shipped / 'wbc-detector-int8'}" in run.stdout, run.stdout
    with sqlite3.connect(tmp / "r.db") as con:
        (bundle,) = con.execute("SELECT bundle FROM sessions").fetchone()
    assert Path(bundle) == shipped / "differential-int8"


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
    assert [line for line in demo if "pip install" in line and "[" in line] == [
        ".venv-device/bin/pip install --quiet '.[device]'"
    ]
    assert demo[-1].startswith(".venv-device/bin/edge run ")
    # Issue 23: the first run shows real cells: field mode on the committed BCCD fields, not the simulator.
    assert (
        "--mode field --source replay:demo/bccd --fps" in demo[-1] and "--loop" not in demo[-1]
    )  # each field once
    test_device = _make_dry_run("test-device")
    # Issue 23: the device install is not editable (as on a Pi), and the tests import it, not ./edge.
    assert ".venv-device/bin/pip install --quiet '.[device,jetson,dev]'" in test_device
    assert not [line for line in demo + test_device if "pip install" in line and " -e " in line]
    assert test_device[-1].startswith(
        "PYTHONSAFEPATH=1 EDGE_TEST_INSTALLED=1 .venv-device/bin/python -m pytest"
    )
    assert "--import-mode=append" in test_device[-1]
    assert any("-e '.[device,jetson,train,dev]'" in line for line in _make_dry_run("test"))  # unchanged
