"""Reloading a daemon's configuration on SIGHUP (systemctl reload): one policy for both
daemons.

The file is read and checked again.  A file that is invalid, or that changes a key only
a restart can change (the daemon's restart keys), is refused as a whole with one error
line, and the running configuration stays; otherwise the daemon applies all of it.  The
CURVE authorized keys are read again either way (key rotation).  `status` replies show
the counts, and why the last reload was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from jobd.config import ConfigError
from jobd.wire.curve import Authenticator

log = logging.getLogger("jobd.reload")


class HasPath(Protocol):
    @property
    def path(self) -> str: ...


C = TypeVar("C", bound=HasPath)


class RestartNeeded(Exception):
    """A reload that changes what only a restart can change."""


@dataclass
class ReloadCounts:
    applied: int = 0
    refused: int = 0
    #: Why the last reload was refused; None once one is applied.
    error: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"applied": self.applied, "refused": self.refused, "error": self.error}


def check_restart_keys(current: object, new: object, keys: Sequence[str], prog: str) -> None:
    """Raise RestartNeeded naming every key of `keys` whose value changed."""
    changed = [key for key in keys if getattr(new, key) != getattr(current, key)]
    if changed:
        raise RestartNeeded(f"{', '.join(changed)} cannot change on reload; restart {prog}")


def reload_config(
    current: C,
    load: Callable[[str], C],
    restart_keys: Sequence[str],
    prog: str,
    apply: Callable[[C], None],
    counts: ReloadCounts,
    auth: Authenticator | None = None,
) -> C | None:
    """Read `current.path` again and `apply` it; returns the new config, or None (with
    the reason logged and counted) when the reload is refused."""
    if auth is not None:
        auth.reload()
    try:
        new = load(current.path)
        check_restart_keys(current, new, restart_keys, prog)
    except (ConfigError, RestartNeeded) as exc:
        counts.refused += 1
        counts.error = str(exc)
        log.error("reload refused, keeping the running config: %s", exc)
        return None
    apply(new)
    counts.applied += 1
    counts.error = None
    return new
