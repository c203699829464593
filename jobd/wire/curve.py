"""ZeroMQ CURVE for every jobd socket: key files, socket options and the authenticator.

A daemon with CURVE configured holds one key pair (zmq's `.key_secret` certificate,
made by `jobctl keygen` / `zmq.auth.create_certificates`).  Its bound sockets are CURVE
servers: the peer must know the daemon's public key to talk to it at all, and a ZAP
authenticator lets in only the public keys found in the `authorized_keys` directory
(one `.key` file each).  A connecting socket (a worker's link to its master, jobctl,
jobd.client) is a CURVE client: it holds its own key pair and the server's public key,
so each side proves who it is to the other and all traffic is encrypted.

Key bytes never reach a log line, an error message or a repr: errors name the file.
See docs/curve.md for operators.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
import zmq.utils.z85
from zmq.auth.asyncio import AsyncioAuthenticator

from jobd.config import CurveConfig

log = logging.getLogger("jobd.curve")

#: The ZAP domain of jobd's sockets; the authenticator's keys apply to it.
DOMAIN = "*"


class CurveError(Exception):
    """A key file or directory that cannot be used; the message names it, never a key."""


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both keys in Z85 text (40 bytes each)."""

    public: bytes
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class ClientCurve:
    """What a connecting socket needs: its own key pair and the server's public key."""

    keys: KeyPair
    server_public: bytes

    @classmethod
    def load(cls, key_file: str, server_key_file: str) -> ClientCurve:
        return cls(load_key_pair(key_file), load_public_key(server_key_file))


def _read(path: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(os.path.expanduser(path))
    except OSError:
        raise CurveError(f"{path}: cannot read the key file") from None
    except (ValueError, IndexError):
        raise CurveError(f"{path}: not a ZeroMQ certificate (no public-key line)") from None
    if not _is_z85_key(public):
        raise CurveError(f"{path}: the public key is not a 40-character Z85 key")
    return public, secret


def _is_z85_key(key: bytes | None) -> bool:
    if key is None or len(key) != 40:
        return False
    try:
        zmq.utils.z85.decode(key)
    except (ValueError, KeyError, IndexError):
        return False
    return True


def load_key_pair(path: str) -> KeyPair:
    """This side's key pair from a `.key_secret` certificate."""
    public, secret = _read(path)
    if not _is_z85_key(secret):
        raise CurveError(
            f"{path}: no valid secret key in it (give the .key_secret file, not the .key)"
        )
    assert secret is not None
    if zmq.curve_public(secret) != public:
        raise CurveError(f"{path}: its public key does not belong to its secret key")
    return KeyPair(public, secret)


def load_public_key(path: str) -> bytes:
    """A peer's public key from its `.key` certificate (a `.key_secret` works too)."""
    return _read(path)[0]


def load_authorized_keys(directory: str) -> set[bytes]:
    """The public keys of the `*.key` files in a directory (`.key_secret` files are not
    read: a directory of allowed clients holds only public keys)."""
    path = Path(os.path.expanduser(directory))
    if not path.is_dir():
        raise CurveError(f"{directory}: not a directory of public .key files")
    return {load_public_key(str(file)) for file in sorted(path.glob("*.key"))}


@dataclass(frozen=True)
class DaemonCurve:
    """A daemon's CURVE setup, its key files read."""

    keys: KeyPair  # for the sockets it binds (and its own side of its master link)
    authorized_keys: str  # the directory the authenticator reads
    master: ClientCurve | None  # a worker's link to its master


def load_daemon_curve(config: CurveConfig) -> DaemonCurve | None:
    """Read the key files of a daemon's `curve:` section (None: CURVE is off); raises
    CurveError.  The config has checked which keys go together."""
    if config.secret_key_file is None or config.authorized_keys is None:
        return None
    keys = load_key_pair(config.secret_key_file)
    load_authorized_keys(config.authorized_keys)  # fail at start, not at the first client
    master = None
    if config.server_key_file is not None:
        master = ClientCurve(keys, load_public_key(config.server_key_file))
    return DaemonCurve(keys, config.authorized_keys, master)


def make_server(sock: zmq.Socket, keys: KeyPair) -> None:
    """Make a socket a CURVE server (before bind): peers must know `keys.public`."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.zap_domain = DOMAIN.encode()
    sock.curve_server = True


def make_client(sock: zmq.Socket, curve: ClientCurve) -> None:
    """Make a socket a CURVE client (before connect) of the server `curve.server_public`."""
    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_serverkey = curve.server_public


class Authenticator:
    """The ZAP handler of one context: admits the keys of `authorized_keys` to every
    CURVE server socket of the context, and re-reads the directory on `reload`."""

    def __init__(self, ctx: zmq.asyncio.Context, authorized_keys: str) -> None:
        self.directory = authorized_keys
        self.allowed = load_authorized_keys(authorized_keys)  # raises CurveError
        self._auth = AsyncioAuthenticator(ctx)

    def start(self) -> None:
        self._auth.start()
        self._configure()
        if not self.allowed:
            log.warning("no keys in %s: no client can connect", self.directory)

    def _configure(self) -> None:
        # Set our validated keys directly: configure_curve(location=...) would log and
        # carry on with the old keys when the directory cannot be read.
        self._auth.allow_any = False
        self._auth.certs[DOMAIN] = dict.fromkeys(self.allowed, True)

    def reload(self) -> None:
        """Take the directory's current keys (key rotation without a restart); a directory
        that cannot be read keeps the keys in force, with an error line."""
        try:
            allowed = load_authorized_keys(self.directory)
        except CurveError as exc:
            log.error("keeping the authorized keys in force: %s", exc)
            return
        added, removed = len(allowed - self.allowed), len(self.allowed - allowed)
        self.allowed = allowed
        self._configure()
        log.info(
            "authorized keys reloaded from %s: %d keys (%d new, %d removed)",
            self.directory, len(allowed), added, removed,
        )  # fmt: skip

    def stop(self) -> None:
        self._auth.stop()
