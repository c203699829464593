"""A MariaDB/MySQL connection pool and the one place database errors are translated.

Every store (the worker's JobStore, the schedules, the client's job queries) builds on
`Database`; none of them knows a socket.  Every failure surfaces as `StorageError`,
whose message never contains the password.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiomysql
import pymysql
from pymysql.constants import CLIENT

from jobd.config import DatabaseURL


class StorageError(Exception):
    """The database could not be reached or refused a statement.

    `retryable` is false when the same statement would fail again (bad data, a missing
    column): retrying it forever would stop every later write behind it."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


#: Errors about the statement itself, not about reaching the server.
_PERMANENT = (
    pymysql.err.DataError,
    pymysql.err.IntegrityError,
    pymysql.err.ProgrammingError,
    pymysql.err.NotSupportedError,
)


TABLE_EXISTS = (
    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
)


def placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


class Database:
    """A pool of connections to one database, and SQL templates for one table."""

    def __init__(
        self, url: DatabaseURL, table: str, pool_size: int = 3, multi_statements: bool = False
    ) -> None:
        self.url = url
        self.multi_statements = multi_statements
        self.table = f"`{table}`"  # validated against config.TABLE_PATTERN
        self.table_name = table
        self.pool_size = pool_size
        self._pool: aiomysql.Pool | None = None

    async def connect(self) -> None:
        """Open the connection pool; raises StorageError."""
        try:
            self._pool = await aiomysql.create_pool(
                minsize=1,
                maxsize=self.pool_size,
                host=self.url.host,
                port=self.url.port,
                user=self.url.user,
                password=self.url.password,
                db=self.url.database,
                charset="utf8mb4",
                autocommit=True,
                client_flag=CLIENT.MULTI_STATEMENTS if self.multi_statements else 0,
                connect_timeout=5,
                pool_recycle=3600,
                # A queue wants READ COMMITTED: a claim locks only the rows it returns.
                init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            )
        except (pymysql.err.MySQLError, OSError, TimeoutError) as exc:
            raise StorageError(
                f"cannot connect to {self.url.redacted()}: {describe(exc)}"
            ) from None

    async def table_exists(self, name: str) -> bool:
        """Whether the database has a table of this name (the jobs table's companions:
        `<table>_schedules`, `<table>_workers`)."""
        async with self._cursor() as cur:
            await cur.execute(TABLE_EXISTS, (self.url.database, name))
            row = await cur.fetchone()
        return bool(row and row[0])

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _cursor(self, transaction: bool = False) -> AsyncIterator[aiomysql.Cursor]:
        if self._pool is None:
            raise StorageError("not connected")
        try:
            async with self._pool.acquire() as conn:
                try:
                    if transaction:
                        await conn.begin()
                    async with conn.cursor() as cur:
                        yield cur
                    if transaction:
                        await conn.commit()
                except BaseException:
                    # Never hand a connection in an unknown state back to the pool.
                    conn.close()
                    raise
        except (pymysql.err.MySQLError, OSError, TimeoutError) as exc:
            permanent = isinstance(exc, _PERMANENT) or _is_data_error(exc)
            raise StorageError(describe(exc), retryable=not permanent) from None

    def _sql(self, query: str, lock: str = "", held: str = "", **lists: int) -> str:
        """Fill a query template: {t} the table, {s} its schedules table, {w} its workers
        table, {lock} a locking clause, {held} a fixed fragment (SettleQueries), and each
        of `lists` with that many placeholders."""
        filled = {k: placeholders(n) for k, n in lists.items()}
        schedules = f"`{self.table_name}_schedules`"
        workers = f"`{self.table_name}_workers`"
        return query.format(t=self.table, s=schedules, w=workers, lock=lock, held=held, **filled)


def _is_data_error(exc: BaseException) -> bool:
    """pymysql reports some data errors (1366 incorrect string value, 4025 a failed CHECK)
    as OperationalError or InternalError."""
    code = exc.args[0] if isinstance(exc, pymysql.err.MySQLError) and exc.args else None
    return code in (1264, 1265, 1292, 1366, 1406, 4025)


def describe(exc: BaseException) -> str:
    """A one-line description of a database error; pymysql's never include the password."""
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
