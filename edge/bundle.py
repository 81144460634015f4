"""The model bundle: the contract between the training host and the device.

A bundle is a directory holding `model.tflite`, optionally `model_edgetpu.tflite`, and
`manifest.json`. `Bundle.load` refuses anything it cannot vouch for (docs/design.md, "The bundle"):
a missing file, a hash mismatch, an unknown schema, labels that do not fit the model output.

Every file is read once: `Bundle.load` reads the manifest's bytes once (the signature is checked on
those bytes, the manifest parsed from them) and each listed file once, hashes those bytes and keeps
them. Whatever runs or checks a bundle file takes its bytes from `Bundle.read` (interpreters get
`model_content`, never the path), so a file swapped on disk after the check can never be what runs
under the recorded hash.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge import __version__, contract
from edge.errors import BundleError

# The manifest's parts (edge/manifest.py), where callers have always found them.
from edge.manifest import SCHEMA_VERSION, Manifest, Metric, Rejection, TensorSpec, Uncertainty  # noqa: F401
from edge.preprocess import PreprocessSpec
from edge.schema import one_line

MANIFEST = "manifest.json"
CPU_MODEL = "model.tflite"
EDGETPU_MODEL = "model_edgetpu.tflite"
ONNX_MODEL = "model.onnx"  # optional: the same model for ONNX Runtime (Jetson: TensorRT / CUDA)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; a bundle must be readable by the daemon's own service user.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bundle(out_dir: str | os.PathLike, models: dict[str, bytes], manifest: Manifest) -> Path:
    """Write model files and a manifest carrying their sha256 and the writer's version and time.

    `models` maps file names (`model.tflite`, `model_edgetpu.tflite`) to their bytes. Files already
    in the bundle and listed in the manifest keep their recorded hash (used by `edge compile`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if CPU_MODEL in models:  # seal what decides a cell's name into the model, so its sha256 covers it
        models = {**models, CPU_MODEL: contract.embed(models[CPU_MODEL], contract.contract_of(manifest))}
    for name, data in models.items():
        _atomic_write(out / name, data)
        manifest.files[name] = hashlib.sha256(data).hexdigest()
    manifest.writer = {
        "name": "edge-hemato",
        "version": __version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write(out / MANIFEST, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())
    return out


MODELS_ENV = "EDGE_MODELS"  # a folder of bundles, for installs outside a source checkout
# Where `pip install` puts the bundles the wheel ships (pyproject.toml, tool.setuptools.data-files):
# <prefix>/share/edge-hemato/models, the prefix being the venv's, or /usr/local for a system-wide pip.
SHARE = Path("share") / "edge-hemato"


def installed_data_dirs() -> list[Path]:
    """The share/edge-hemato folders an install may have put data in: this interpreter's prefix (a
    venv), the install scheme's data path (/usr/local on Debian's own Python), then /usr/share."""
    prefixes = [sys.prefix, sysconfig.get_path("data"), "/usr"]
    return [Path(p) / SHARE for p in dict.fromkeys(prefixes)]


def find_bundle(name: str) -> Path:
    """A committed bundle by name (e.g. "differential-int8"), found the same way from any directory:
    $EDGE_MODELS/<name>, then ./models/<name>, then models/<name> beside the package (a source
    checkout), then the copy a non-editable install ships in <prefix>/share/edge-hemato/models/<name>
    (installed_data_dirs). BundleError lists where it looked."""
    bases = [
        os.environ.get(MODELS_ENV),
        Path.cwd() / "models",
        Path(__file__).resolve().parents[1] / "models",
        *(d / "models" for d in installed_data_dirs()),
    ]
    looked = []
    for base in dict.fromkeys(str(b) for b in bases if b):
        candidate = Path(base) / name
        if (candidate / MANIFEST).is_file():
            return candidate
        looked.append(str(candidate))
    raise BundleError(
        f"bundle {name} not found (looked in {', '.join(looked)}; set {MODELS_ENV} or pass a path)"
    )


def read_verified(file: Path, expected: str) -> bytes:
    """The bytes of `file`, read once, whose sha256 is `expected`; BundleError otherwise."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{file}: missing model file listed in the manifest") from None
    except OSError as exc:
        raise BundleError(f"{file}: unreadable ({exc.strerror or exc})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BundleError(
            f"{file}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…): tampered or corrupt"
        )
    return data


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    signature: object = None  # edge.signing.Signature, verified, when the bundle is signed
    # Each listed file's bytes, verified against the manifest: what `read` hands out.
    contents: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def read(self, name: str) -> bytes:
        """The bytes of one of the bundle's files, verified against the manifest's sha256. Everything
        that loads a bundle file (interpreters, the rejection scorer, checks) takes them from here."""
        if name not in self.manifest.files:
            raise BundleError(f"{self.path}: bundle has no {name}")
        if name not in self.contents:  # a Bundle built without load()
            self.contents[name] = read_verified(self.path / name, self.manifest.files[name])
        return self.contents[name]

    def model_bytes(self, edgetpu: bool = False) -> bytes:
        """The verified bytes of model.tflite (or model_edgetpu.tflite)."""
        return self.read(self.model_path(edgetpu).name)

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def is_detector(self) -> bool:
        return self.manifest.task == "detector"

    def require_task(self, task: str, hint: str = "") -> None:
        """A classifier bundle where a detector is expected, or the other way round: one line, exit 3."""
        if self.manifest.task != task:
            raise BundleError(f"{self.path}: a {self.manifest.task} bundle, not a {task}{hint}")

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return self.manifest.preprocess

    @property
    def sha256(self) -> str:
        """The CPU model's hash: what results and benchmarks record as 'which model'."""
        return self.manifest.files[CPU_MODEL]

    def model_path(self, edgetpu: bool = False) -> Path:
        name = EDGETPU_MODEL if edgetpu else CPU_MODEL
        if name not in self.manifest.files:
            hint = " (run `edge compile` on a machine with edgetpu_compiler)" if edgetpu else ""
            raise BundleError(f"{self.path}: bundle has no {name}{hint}")
        return self.path / name

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        """Load and verify a bundle directory. Raises BundleError with one line naming file and reason."""
        root = Path(path)
        if not root.exists():
            raise BundleError(f"{root}: bundle not found")
        if root.is_file():
            raise BundleError(
                f"{root}: expected a bundle directory (model.tflite + manifest.json), got a file"
            )
        manifest_path = root / MANIFEST
        if not manifest_path.exists():
            inside = (
                sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
            )
            hint = f" ({root} holds the bundles {', '.join(inside)}: name one of them)" if inside else ""
            raise BundleError(f"{manifest_path}: missing manifest{hint}")
        try:
            manifest_bytes = manifest_path.read_bytes()  # once: parsed and signature-checked alike
            raw = json.loads(manifest_bytes.decode())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise BundleError(f"{manifest_path}: manifest must be a JSON object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            hint = " (written by edge 0.1: quantize it again with this version)" if version == 1 else ""
            raise BundleError(
                f"{manifest_path}: unknown schema version {version!r} (this edge {__version__} reads "
                f"{SCHEMA_VERSION}){hint}"
            )
        try:
            manifest = Manifest.model_validate(raw, strict=True)
        except ValidationError as exc:
            raise BundleError(f"{manifest_path}: {one_line(exc)}") from None
        if CPU_MODEL not in manifest.files:
            raise BundleError(f"{manifest_path}: lists no {CPU_MODEL}")
        if manifest.rejection is not None and manifest.rejection.file not in manifest.files:
            raise BundleError(
                f"{manifest_path}: rejection.file {manifest.rejection.file} is not listed in files"
            )
        if manifest.golden is not None and manifest.golden.file not in manifest.files:
            raise BundleError(f"{manifest_path}: golden.file {manifest.golden.file} is not listed in files")
        contents = {name: read_verified(root / name, expected) for name, expected in manifest.files.items()}
        _check_contract(root, manifest, contents[CPU_MODEL])
        from edge.signing import read_signature

        return cls(root, manifest, read_signature(root, manifest_bytes), contents)


def _check_contract(root: Path, manifest: Manifest, model: bytes) -> None:
    """The manifest must say what the model itself was sealed with (labels, preprocessing, flagging)."""
    try:
        sealed = contract.read(model)
    except ImportError:  # no TFLite runtime installed: nothing here could run the model either
        return
    except Exception as exc:  # the schema module's own error for bytes that are no TFLite model
        raise BundleError(f"{root / CPU_MODEL}: not a TFLite model ({type(exc).__name__}: {exc})") from None
    if sealed is None:
        raise BundleError(
            f"{root / CPU_MODEL}: carries no sealed labels and preprocessing (written before schema 2): "
            "quantize it again with this version"
        )
    changed = contract.disagreements(manifest, sealed)
    if changed:
        raise BundleError(
            f"{root / MANIFEST}: {', '.join(changed)} differ from what {CPU_MODEL} was sealed with: "
            "the manifest was edited after edge quantize"
        )
