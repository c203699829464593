"""`jobctl keygen DIR NAME`: a CURVE key pair for a daemon or a client (docs/curve.md)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import zmq.auth

from jobctl.connection import EXIT_ERROR, Daemon, fail


@click.command()
@click.argument("directory", metavar="DIR")
@click.argument("name")
@click.pass_obj
def keygen(daemon: Daemon, directory: str, name: str) -> None:
    """Create a CURVE key pair: DIR/NAME.key and DIR/NAME.key_secret.

    NAME.key holds the public key: copy it to the authorized_keys directory of every
    daemon this one (or this client) talks to, and give it as the server key to those
    that connect to it.  NAME.key_secret holds the pair and stays where it is made
    (mode 600); it is the secret_key_file of a daemon, or jobctl's --key."""
    if not name or "/" in name or name.startswith("."):
        raise click.UsageError(f"NAME must be a plain file name, got {name!r:.80}")
    folder = Path(directory)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing:
        fail(f"{existing[0]} exists; not overwriting a key (remove it first)", EXIT_ERROR)
    # The secret file is never readable by others, not even for a moment.
    old_umask = os.umask(0o077)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        zmq.auth.create_certificates(folder, name)
    except OSError as exc:
        fail(f"cannot write keys in {folder}: {exc.strerror}", EXIT_ERROR)
    finally:
        os.umask(old_umask)
    public.chmod(0o644)  # the public half is meant to be copied around
    key = zmq.auth.load_certificate(public)[0].decode()
    if daemon.json:
        daemon.show({"public": str(public), "secret": str(secret), "public_key": key}, str)
    else:
        click.echo(f"public key:  {public}  ({key})\nsecret key:  {secret}  (keep it private)")
