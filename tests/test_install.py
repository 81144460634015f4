"""A device install that works as documented (issue 23): a non-editable `pip install '.[device]'` ships
the default classifier and detector with the package (<prefix>/share/edge-hemato/models), `edge` finds
them from any folder, and `make test-device` runs the suite against that installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import edge
from edge.bundle import MODELS_ENV, find_bundle, installed_data_dirs
from edge.daemon.config import DEFAULT_BUNDLE, DEFAULT_DETECTOR

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# Set by `make test-device`, whose .venv-device holds a non-editable install.
INSTALLED_RUN = os.environ.get("EDGE_TEST_INSTALLED") == "1"


def test_find_bundle_looks_where_pip_puts_the_shipped_bundles(monkeypatch, tmp_path, tiny_bundle):
    # Issue 23: a non-editable install had no models/ beside the package, so `edge run --mode field` from
    # another folder said "bundle wbc-detector-int8 not found".
    prefix = tmp_path / "venv"
    shutil.copytree(tiny_bundle, prefix / "share" / "edge-hemato" / "models" / "a-shipped-bundle")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.delenv(MODELS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert installed_data_dirs()[0] == prefix / "share" / "edge-hemato"
    assert find_bundle("a-shipped-bundle") == prefix / "share" / "edge-hemato" / "models" / "a-shipped-bundle"


def test_the_wheel_ships_the_daemons_default_bundles_and_only_those():
    # The wheel's data-files (pyproject.toml) put each default bundle's committed files where find_bundle
    # looks; the 5-class reference bundles stay in the checkout (the wheel stays ~6 MB).
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    bundles = {dest: globs for dest, globs in files.items() if dest.startswith("share/edge-hemato/models/")}
    assert sorted(bundles) == sorted(
        f"share/edge-hemato/models/{n}" for n in (DEFAULT_BUNDLE, DEFAULT_DETECTOR)
    )
    for dest, globs in bundles.items():
        name = dest.rsplit("/", 1)[1]
        assert globs == [f"models/{name}/*"]
        assert (ROOT / "models" / name / "manifest.json").is_file()
        assert not [
            p for p in (ROOT / "models" / name).iterdir() if p.is_dir()
        ]  # a glob of files: no subfolders


@pytest.mark.skipif(not INSTALLED_RUN, reason="only under `make test-device` (a non-editable install)")
def test_make_test_device_runs_the_installed_package(tmp_path, monkeypatch):
    site = Path(sysconfig.get_path("purelib")).resolve()
    here = Path(edge.__file__).resolve()
    assert here.is_relative_to(site) and not here.is_relative_to(ROOT / "edge"), here
    # what the tests start (python -m edge.cli, from the checkout) runs the installed package too
    code = "import edge; print(edge.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert Path(out.stdout.strip()).resolve().is_relative_to(site), out.stdout
    monkeypatch.delenv(MODELS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    shipped = Path(sys.prefix) / "share" / "edge-hemato" / "models"
    assert find_bundle(DEFAULT_BUNDLE) == shipped / DEFAULT_BUNDLE
    assert find_bundle(DEFAULT_DETECTOR) == shipped / DEFAULT_DETECTOR
