"""Worker instances: the `<table>_workers` table.  Each start of a worker is one
instance, with a random id; it writes its heartbeat (the database's clock) every
heartbeat_interval seconds and counts as alive for `lease` seconds after the last one.
A rescuer settles the rows of an instance whose lease ran out (jobd.store.settle), in
the same transaction that marks it rescued, so any number of rescuers settle each row
once.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobd.store.pool import Database
from jobd.store.settle import Decide, Settled, rescue_rules, settle_rows

#: The database's clock, in UNIX seconds with milliseconds: every time of the workers
#: table is the server's, so the clocks of the hosts never matter.
NOW = "UNIX_TIMESTAMP(NOW(3))"
_COLUMNS = "instance, name, host, pid, version, targets, started, heartbeat, lease, state"


class InstanceQueries:
    register = (
        "INSERT INTO {w} (instance, name, host, pid, version, targets, started, heartbeat,"
        f" lease) VALUES (%s, %s, %s, %s, %s, %s, {NOW}, {NOW}, %s)"
    )
    # `beats` changes every time, so the row counts as changed (affected) exactly when
    # the instance is still running.
    heartbeat = (
        f"UPDATE {{w}} SET heartbeat = {NOW}, beats = beats + 1, lease = %s, targets = %s"
        " WHERE instance = %s AND state = 'running'"
    )
    end = (
        f"UPDATE {{w}} SET state = 'stopped', ended = {NOW}"
        " WHERE instance = %s AND state = 'running'"
    )
    expired = f"heartbeat + lease < {NOW}"
    select_dead = f"SELECT {_COLUMNS} FROM {{w}} WHERE state = 'running' AND {expired}"
    select_others = (
        f"SELECT {_COLUMNS}, {expired} FROM {{w}}"
        " WHERE name = %s AND state = 'running' AND instance <> %s"
    )
    # Only the first rescuer changes the row (the others wait for its lock, then find it
    # rescued); `{lease}` is the expiry condition, or nothing for a forced settlement.
    take = (
        f"UPDATE {{w}} SET state = 'rescued', ended = {NOW}, rescued_by = %s"
        " WHERE instance = %s AND state = 'running' {lease}"
    )
    select_all = (
        f"SELECT {_COLUMNS}, {NOW} - heartbeat, ended, rescued_by,"
        " (SELECT COUNT(*) FROM {t} WHERE {t}.instance = {w}.instance"
        "  AND ({t}.status IN ('accepted', 'running') OR ({t}.status = 'manual'"
        "  AND {t}.worker IS NOT NULL))) FROM {w}"
        " ORDER BY state = 'running' DESC, heartbeat DESC LIMIT %s"
    )


@dataclass(frozen=True)
class Instance:
    """One row of the workers table."""

    instance: str
    name: str
    host: str
    pid: int
    version: str
    targets: Mapping[str, Any]  # {target: {slots, max_attempts, on_rescue, max_rescues}}
    started: float
    heartbeat: float  # UNIX time, the database's clock
    lease: float
    state: str  # running, stopped, rescued
    expired: bool = False  # the lease has run out (when asked for)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Instance:
        values = list(row[:10])
        values[5] = json.loads(values[5])
        for i in (6, 7, 8):
            values[i] = float(values[i])
        return cls(*values, expired=bool(row[10]) if len(row) > 10 else False)


def new_instance_id() -> str:
    return secrets.token_hex(8)


class InstanceStore(Database):
    """The workers table of one jobs table."""

    async def has_table(self) -> bool:
        return await self.table_exists(f"{self.table_name}_workers")

    async def register(
        self, instance: str, name: str, host: str, pid: int, version: str,
        targets: Mapping[str, Any], lease: float,
    ) -> None:  # fmt: skip
        params = (instance, name, host, pid, version, json.dumps(targets), lease)
        async with self._cursor() as cur:
            await cur.execute(self._sql(InstanceQueries.register), params)

    async def heartbeat(self, instance: str, lease: float, targets: Mapping[str, Any]) -> bool:
        """Write the heartbeat; False when the instance is not running any more (it was
        rescued, or settled by an operator): its rows are not its own."""
        async with self._cursor() as cur:
            changed = await cur.execute(
                self._sql(InstanceQueries.heartbeat), (lease, json.dumps(targets), instance)
            )
        return bool(changed)

    async def end(self, instance: str) -> None:
        """A graceful end: every outcome of the instance is written."""
        async with self._cursor() as cur:
            await cur.execute(self._sql(InstanceQueries.end), (instance,))

    async def dead(self) -> list[Instance]:
        """Running instances whose lease has run out."""
        async with self._cursor() as cur:
            await cur.execute(self._sql(InstanceQueries.select_dead))
            return [Instance.from_row(row) for row in await cur.fetchall()]

    async def others(self, name: str, instance: str) -> list[Instance]:
        """The running instances of a worker's name other than `instance`."""
        async with self._cursor() as cur:
            await cur.execute(self._sql(InstanceQueries.select_others), (name, instance))
            return [Instance.from_row(row) for row in await cur.fetchall()]

    async def rescue(
        self, dead: Instance, by: str, reason: str, decide: Decide | None = None,
        expired_only: bool = True,
    ) -> Settled | None:  # fmt: skip
        """Mark `dead` rescued by `by` and settle its rows, in one transaction; None when
        another rescuer was first (or the instance wrote a heartbeat meanwhile, with
        `expired_only`).  `decide`: the rules of running rows (default: the instance's
        own, recorded with its targets)."""
        take = InstanceQueries.take.replace(
            "{lease}", f"AND {InstanceQueries.expired}" if expired_only else ""
        )
        async with self._cursor(transaction=True) as cur:
            if not await cur.execute(self._sql(take), (by[:128], dead.instance)):
                return None
            return await settle_rows(
                cur.execute, cur.fetchall, self._sql, "instance", dead.instance, reason,
                decide or rescue_rules(dead.targets),
            )  # fmt: skip

    async def settle_unrecorded(self, name: str, reason: str, decide: Decide) -> Settled:
        """Settle the rows a worker's name claimed with no instance recorded (an older
        jobd, before the workers table)."""
        async with self._cursor(transaction=True) as cur:
            return await settle_rows(
                cur.execute, cur.fetchall, self._sql, "name", name, reason, decide
            )

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Instances, running ones first, each with its heartbeat's age and the jobs it
        holds (accepted, running, or manual rows it reserved)."""
        async with self._cursor() as cur:
            await cur.execute(self._sql(InstanceQueries.select_all), (limit,))
            rows = await cur.fetchall()
        out = []
        for row in rows:
            instance = Instance.from_row(row[:10])
            age, ended, rescued_by, held = row[10:]
            ended = None if ended is None else float(ended)
            out.append({
                **vars(instance), "age": float(age), "ended": ended, "rescued_by": rescued_by,
                "held": int(held),
            })  # fmt: skip
        return out
