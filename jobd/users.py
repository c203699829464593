"""The users of a daemon's HTTP endpoint (the master's dashboard, a worker's metrics):
a file of one user a line, `NAME ROLE HASH`, the hash bcrypt's.  `jobctl dashboard-user`
writes it; the daemons read it at start and again whenever it changes (`UsersFile`).  A
`viewer` reads; an `operator` also acts (pause, continue, retry, run).  The file holds
no password, only hashes, and is written with mode 600.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt

ROLES = ("viewer", "operator")
USER_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
#: bcrypt reads at most this many bytes of a password.
MAX_PASSWORD = 72
#: Seconds between two looks at whether the users file changed.
RECHECK = 1.0

log = logging.getLogger("jobd.users")


class UsersError(Exception):
    """A users file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hash: str

    @property
    def acts(self) -> bool:
        return self.role == "operator"

    def checks(self, password: str) -> bool:
        data = password.encode()
        return len(data) <= MAX_PASSWORD and bcrypt.checkpw(data, self.hash.encode())


def load_users(path: str) -> dict[str, User]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersError(f"{path}: cannot read: {exc.strerror}") from None
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or not USER_PATTERN.fullmatch(parts[0]) or parts[1] not in ROLES:
            raise UsersError(f"{path}: line {number}: expected NAME ROLE HASH")
        if not parts[2].startswith("$2"):
            raise UsersError(f"{path}: line {number}: not a bcrypt hash")
        users[parts[0]] = User(*parts)
    return users


class UsersFile:
    """The users of a file, read again when it changes (looked at once a RECHECK at
    most), so `jobctl dashboard-user` takes effect without a restart: a removed user's
    session and credentials stop working, a new role applies to the next request.  A
    change that breaks the file keeps the users read before, with a warning."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = self._stat()
        self._users = load_users(path)
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def current(self) -> dict[str, User]:
        now = time.monotonic()
        if now - self._checked >= RECHECK:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._users = load_users(self.path)
                    log.info("%s read again: %d users", self.path, len(self._users))
                except UsersError as exc:
                    log.warning("%s; keeping the %d users read before", exc, len(self._users))
        return self._users

    def get(self, name: str) -> User | None:
        return self.current().get(name)


def hash_password(password: str) -> str:
    data = password.encode()
    if not data or len(data) > MAX_PASSWORD:
        raise ValueError(f"a password of 1 to {MAX_PASSWORD} bytes")
    return bcrypt.hashpw(data, bcrypt.gensalt()).decode()


def save_users(path: str, users: dict[str, User]) -> None:
    """Write the file whole, atomically, mode 600."""
    folder = os.path.dirname(os.path.abspath(path))
    lines = ["# jobd HTTP users: NAME ROLE BCRYPT-HASH (jobctl dashboard-user)"]
    lines += [f"{u.name} {u.role} {u.hash}" for u in sorted(users.values(), key=lambda u: u.name)]
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".users-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def set_user(path: str, name: str, role: str, password: str) -> None:
    """Add a user, or give one a new role and password."""
    if not USER_PATTERN.fullmatch(name):
        raise ValueError(f"a user name matching {USER_PATTERN.pattern}")
    if role not in ROLES:
        raise ValueError(f"a role of {', '.join(ROLES)}")
    users = load_users(path) if os.path.exists(path) else {}
    users[name] = User(name, role, hash_password(password))
    save_users(path, users)


def remove_user(path: str, name: str) -> bool:
    users = load_users(path)
    if users.pop(name, None) is None:
        return False
    save_users(path, users)
    return True
