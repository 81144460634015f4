"""Shared fixtures: synthetic data everywhere, real data only through EDGE_DATA_DIR."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from edge.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def data_dir() -> Path:
    return Path(os.environ.get("EDGE_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/data (or $EDGE_DATA_DIR); the test is skipped, with the reason, where it is absent."""
    path = data_dir()
    if not (path / "blood-5class").is_dir():
        pytest.skip(f"real data not found at {path} (set EDGE_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def synthetic_split(tmp_path_factory) -> Path:
    """A small synthetic dataset with train/ and val/ folders, 5 classes."""
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root / "train", per_class=24, seed=1)
    make_dataset(root / "val", per_class=8, seed=2)
    return root


TINY_BUNDLE = ROOT / "tests" / "fixtures" / "tiny-int8"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real int8 TFLite bundle of a tiny CNN trained on the synthetic cells (committed, made by
    scripts/make_test_bundle.py), copied so that no test can change the original. No TensorFlow needed."""
    copy = tmp_path_factory.mktemp("bundle") / "tiny"
    shutil.copytree(TINY_BUNDLE, copy)
    return copy


@pytest.fixture(scope="session")
def tiny_float(tmp_path_factory, synthetic_split) -> Path:
    """For training-side tests: the tiny CNN trained afresh (float.keras) and its int8 bundle beside it."""
    if not HAS_TF:
        pytest.skip("needs the train extra (TensorFlow)")
    from tests.tiny_model import build_tiny_bundle

    return build_tiny_bundle(synthetic_split / "train", tmp_path_factory.mktemp("float") / "tiny")


def pytest_collection_modifyitems(config, items):
    """Tests marked `train` skip, with the reason, on a device install (no train extra)."""
    if HAS_TF:
        return
    skip = pytest.mark.skip(
        reason="needs the train extra (TensorFlow, tqdm, imagehash); this is a device install"
    )
    for item in items:
        if "train" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    """Which edge the tests import: the checkout, or (make test-device) the installed package."""
    import edge

    where = Path(edge.__file__).resolve().parent
    return f"edge {edge.__version__} from {where} ({'checkout' if where == ROOT / 'edge' else 'installed'})"


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test():
    """A test that fails while its `edge run` subprocess still runs must not leave it behind (one left
    from a failed MQTT test took a core for 75 minutes). Read from sys.modules: only sessions that
    imported the helper have daemons to stop; those of wider-scoped fixtures, started before this
    test, are left to them."""
    acceptance = sys.modules.get("tests.test_daemon_acceptance")
    before = len(acceptance.Daemon.started) if acceptance is not None else 0
    yield
    acceptance = sys.modules.get("tests.test_daemon_acceptance")
    if acceptance is not None:
        acceptance.Daemon.stop_leftovers(before)
