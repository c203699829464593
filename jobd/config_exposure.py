"""What a daemon shows to the network, as its config says: the CURVE keys of its ZeroMQ
sockets, its HTTP endpoint (metrics, the master's dashboard) and the users let in there,
and the rule that nothing is served in plain text beyond this host without
`allow_insecure: true`."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from jobd.config_reader import Reader

#: An HTTP endpoint: HOST:PORT (an IPv6 host in brackets).
HTTP_PATTERN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}")


@dataclass(frozen=True)
class CurveConfig:
    """Paths of the CURVE keys (docs/curve.md); all None: CURVE is off.  The keys
    themselves are read by jobd.wire.curve when the daemon starts, never kept here."""

    secret_key_file: str | None = None  # this daemon's key pair (.key_secret)
    authorized_keys: str | None = None  # directory of the allowed peers' public .key files
    server_key_file: str | None = None  # worker only: the master's public key

    @property
    def enabled(self) -> bool:
        return self.secret_key_file is not None


@dataclass(frozen=True)
class HttpConfig:
    """A daemon's HTTP endpoint; `address` None: off."""

    address: str | None = None  # HOST:PORT
    #: The file of users let in (jobctl dashboard-user); None: no logins asked.
    users: str | None = None
    #: A file holding the key that signs session cookies; None: a new key each start.
    secret_file: str | None = None

    @property
    def host(self) -> str:
        assert self.address is not None
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        assert self.address is not None
        return int(self.address.rsplit(":", 1)[1])


def relative_path(reader: Reader, value: str | None) -> str | None:
    """A path of the config, relative to the config file (keys can sit next to it)."""
    return None if value is None else str(Path(reader.path).parent / os.path.expanduser(value))


def parse_http(reader: Reader, key: str, secret: bool = True) -> HttpConfig:
    """`KEY: HOST:PORT`, `http_users` and (the master's) `http_secret_file`.  An address
    other hosts can reach needs the users file (the dashboard's logins, the metrics'
    basic auth) or `allow_insecure: true`."""
    http = HttpConfig(
        address=reader.matching(key, HTTP_PATTERN, "HOST:PORT"),
        users=relative_path(reader, reader.string("http_users")),
        secret_file=relative_path(reader, reader.string("http_secret_file")) if secret else None,
    )
    if http.address is None or http.users is not None or is_loopback(f"tcp://{http.address}"):
        return http
    if not reader.boolean("allow_insecure", False):
        raise reader.error(
            key,
            f"{http.address} can be reached from other hosts, and without http_users anyone"
            " who can reach it could read it (and steer the queue, on the dashboard):"
            " give http_users: (jobctl dashboard-user add) or set allow_insecure: true",
        )
    return http


def parse_curve(reader: Reader, master: str | None = None, worker: bool = False) -> CurveConfig:
    """The `curve:` section; `master` is the worker's master address (it needs the
    master's public key), `worker` allows `server_key_file` at all."""
    section = reader.section("curve")

    def path(name: str) -> str | None:
        return relative_path(reader, section.string(name))

    curve = CurveConfig(
        secret_key_file=path("secret_key_file"),
        authorized_keys=path("authorized_keys"),
        server_key_file=path("server_key_file") if worker else None,
    )
    section.finish()
    given = [k for k, v in vars(curve).items() if v is not None]
    if given and curve.secret_key_file is None:
        raise section.error(section.key("secret_key_file"), f"required with {given[0]}")
    if curve.enabled and curve.authorized_keys is None:
        raise section.error(
            section.key("authorized_keys"),
            "required with secret_key_file (the directory of the public keys let in)",
        )
    if curve.enabled and master is not None and curve.server_key_file is None:
        raise section.error(
            section.key("server_key_file"), "required with master: (the master's public key)"
        )
    return curve


def is_loopback(endpoint: str) -> bool:
    """Whether a bind address is reachable from this host only: ipc:// and inproc://
    always; tcp:// for a loopback IP, `localhost` or `lo`.  Anything else (`*`, another
    interface, a host name) counts as reachable from the network."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(reader: Reader, key: str, endpoint: str, curve: CurveConfig) -> None:
    """Refuse to serve plain text beyond this host unless `allow_insecure: true`."""
    if curve.enabled or is_loopback(endpoint) or reader.boolean("allow_insecure", False):
        return
    raise reader.error(
        key,
        f"{endpoint} can be reached from other hosts, and without CURVE keys anyone who can "
        "reach it could send requests and read the traffic: configure curve: (see "
        "docs/curve.md) or set allow_insecure: true",
    )
