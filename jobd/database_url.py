"""The database URL of a jobs table: mysql://user:password@host:port/database.  The
password never shows in a repr or a message."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class DatabaseURL:
    """mysql://user:password@host:port/database; the password never shows in repr."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str

    @classmethod
    def parse(cls, url: str) -> DatabaseURL:
        """Raise ValueError (without the password in it) for a malformed URL."""
        if not isinstance(url, str):
            raise ValueError("expected a URL string")
        try:
            parts = urlsplit(url)
            port = parts.port or 3306
        except ValueError:
            raise ValueError(
                "malformed URL (expected mysql://user:password@host:port/db)"
            ) from None
        if parts.scheme not in ("mysql", "mariadb"):
            raise ValueError("scheme must be mysql:// or mariadb://")
        if not parts.hostname:
            raise ValueError("the URL names no host")
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ValueError("the URL names no database (mysql://user@host:port/DATABASE)")
        if parts.query or parts.fragment:
            raise ValueError("the URL may not have a query or fragment")
        return cls(
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            host=parts.hostname,
            port=port,
            database=database,
        )

    def redacted(self) -> str:
        secret = ":***" if self.password else ""
        return f"mysql://{self.user}{secret}@{self.host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.redacted()
