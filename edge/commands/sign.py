"""`edge sign BUNDLE --key KEY`: sign a bundle a clinic has approved (Ed25519, edge/signing.py)."""

from __future__ import annotations

from pathlib import Path

import click

from edge.bundle import Bundle
from edge.signing import generate_key
from edge.signing import sign as sign_bundle


@click.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), help="Private key file.")
@click.option(
    "--signer", default="", help="Who approved it, as edge info and the daemon show it (e.g. the lab)."
)
@click.option(
    "--new-key",
    "new_key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a new private key here (0600) and print its public key, for the daemons' trusted_keys.",
)
def sign(bundle, key_path, signer, new_key):
    """Sign BUNDLE's manifest (which holds the sha256 of every model file) with an Ed25519 key.

    \b
    A daemon whose config lists trusted public keys (trusted_keys = ["..."]) runs only bundles signed
    by one of them. Anything that rewrites the manifest (edge compile, quantizing again) needs a new
    signature. Keep the private key off the devices; never put it in a bundle.

    \b
    Examples:
      edge sign --new-key ~/clinic-x.key          # once; prints the public key
      edge sign models/differential-int8 --key ~/clinic-x.key --signer "Clinic X lab"
    """
    if new_key:
        public = generate_key(new_key)
        click.echo(f"wrote {new_key} (keep it private)")
        click.echo(f"public key (for trusted_keys): {public}")
        if not bundle:
            return
    if not bundle or not key_path:
        raise click.UsageError("give BUNDLE and --key KEY (or --new-key PATH to make a key)")
    Bundle.load(bundle)  # only a bundle that verifies as it is gets signed
    signature = sign_bundle(bundle, key_path, signer or key_path.stem)
    click.echo(
        f"signed {bundle} as {signature.signer!r} (key {signature.key_id}, manifest sha256 "
        f"{signature.manifest_sha256[:16]}…)"
    )
