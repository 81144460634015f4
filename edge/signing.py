"""Signed bundles: a clinic signs the bundles it has approved with its own Ed25519 key (PyNaCl), and a
daemon that lists trusted public keys refuses any bundle without a signature from one of them.

The signature covers manifest.json byte for byte, and the manifest holds the sha256 of every model
file, so it covers the whole bundle. It lives beside them in signature.json:

    {"signer": "Clinic X lab", "public_key": "<base64>", "signed": "<UTC time>",
     "manifest_sha256": "<hex>", "signature": "<base64 Ed25519 signature of manifest.json>"}

Anything that rewrites the manifest (edge compile, re-quantizing) invalidates the signature: sign
again after it. No private key is ever written into a bundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import BundleError, EdgeError, MissingExtraError

SIGNATURE = "signature.json"


class SigningError(EdgeError):
    """A key file that cannot be read or written."""

    exit_code = 2


def _nacl(command: str):
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError:
        raise MissingExtraError(command, "device", "pynacl") from None
    return nacl.signing, nacl.exceptions


@dataclass(frozen=True)
class Signature:
    signer: str
    public_key: str  # base64
    signed: str
    manifest_sha256: str

    @property
    def key_id(self) -> str:
        """A short fingerprint of the public key, as `edge info` and the daemon print it."""
        return hashlib.sha256(base64.b64decode(self.public_key)).hexdigest()[:16]


def generate_key(path: str | os.PathLike) -> str:
    """Write a new private key (0600) to `path`; returns the public key (base64) to distribute."""
    signing, _ = _nacl("edge sign --new-key")
    path = Path(path)
    if path.exists():
        raise SigningError(f"{path}: already exists; refusing to overwrite a key")
    key = signing.SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(bytes(key)).decode() + "\n")
    return base64.b64encode(bytes(key.verify_key)).decode()


def _read_key(path: Path):
    signing, _ = _nacl("edge sign")
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
        return signing.SigningKey(raw)
    except FileNotFoundError:
        raise SigningError(
            f"{path}: key file not found (make one with `edge sign --new-key {path}`)"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not an Ed25519 private key file ({exc})") from None


def sign(bundle_dir: str | os.PathLike, key_path: str | os.PathLike, signer: str) -> Signature:
    """Sign the bundle's manifest.json with the private key in `key_path`; writes signature.json."""
    root = Path(bundle_dir)
    manifest = (root / "manifest.json").read_bytes()
    key = _read_key(Path(key_path))
    signature = Signature(
        signer=signer,
        public_key=base64.b64encode(bytes(key.verify_key)).decode(),
        signed=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
    )
    record = {**signature.__dict__, "signature": base64.b64encode(key.sign(manifest).signature).decode()}
    (root / SIGNATURE).write_text(json.dumps(record, indent=2) + "\n")
    return signature


def read_signature(bundle_dir: str | os.PathLike, manifest: bytes | None = None) -> Signature | None:
    """The bundle's signature, verified against `manifest` (the bytes of its manifest.json that
    Bundle.load parsed; read here when not given); None for an unsigned bundle. A signature that does
    not verify is a BundleError, signed or not by a trusted key."""
    root = Path(bundle_dir)
    path = root / SIGNATURE
    if not path.exists():
        return None
    signing, exceptions = _nacl("a signed bundle")
    try:
        record = json.loads(path.read_text())
        public = base64.b64decode(record["public_key"], validate=True)
        raw = base64.b64decode(record["signature"], validate=True)
        if manifest is None:
            manifest = (root / "manifest.json").read_bytes()
        signing.VerifyKey(public).verify(manifest, raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable signature ({exc})") from None
    except exceptions.BadSignatureError:
        raise BundleError(
            f"{path}: the signature does not match manifest.json (changed after signing)"
        ) from None
    return Signature(
        str(record.get("signer", "")),
        record["public_key"],
        str(record.get("signed", "")),
        str(record.get("manifest_sha256", "")),
    )


def require_trusted(bundle, trusted_keys: list[str]) -> Signature:
    """The daemon's rule when it lists trusted keys: a valid signature by one of them, or refusal.
    `bundle`: a loaded edge.bundle.Bundle, whose signature was checked on the manifest it runs by (not
    the files as they are on disk now), or a bundle directory."""
    if isinstance(bundle, str | os.PathLike):
        bundle_dir, signature = Path(bundle), read_signature(bundle)
    else:
        bundle_dir, signature = bundle.path, bundle.signature
    if signature is None:
        raise BundleError(
            f"{bundle_dir}: unsigned bundle, and this device only runs bundles signed by a trusted key"
        )
    if signature.public_key not in trusted_keys:
        raise BundleError(
            f"{bundle_dir}: signed by {signature.signer!r} (key {signature.key_id}), which is not a trusted key here"
        )
    return signature
