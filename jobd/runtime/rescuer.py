"""The rescuer: every rescue_interval seconds it looks for worker instances whose
heartbeat is older than their lease (by the database's clock) and settles their rows by
the rules of a restart (jobd.store.instances, jobd.store.settle), then pokes the targets
of the rows it gave back.  jobd-master with a database runs one, and so does every
worker with `rescuer: true`; any number may run, and each row is settled once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from jobd.database_url import DatabaseURL
from jobd.runtime.background import open_store, start_background
from jobd.store.instances import Instance, InstanceStore
from jobd.store.pool import StorageError
from jobd.store.settle import Settled

log = logging.getLogger("jobd.rescuer")


class Rescuer:
    def __init__(
        self, store: InstanceStore, who: str, poke: Callable[[list[str]], None], interval: float
    ) -> None:
        self.store = store
        self.who = who
        self.poke = poke
        self.interval = interval
        #: What the rescues of this rescuer did, for `status`.
        self.counts = {"instances": 0, "released": 0, "retried": 0, "failed": 0}
        #: Looks for dead instances done (each one a query, whatever it finds).
        self.sweeps = 0
        self._failing = False

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
                self._failing = False
            except StorageError as exc:
                if not self._failing:
                    log.warning("rescuer: %s", exc)
                self._failing = True
            await asyncio.sleep(self.interval)

    async def sweep(self) -> Settled:
        """Rescue every dead instance once; returns what was settled."""
        total = Settled()
        found = await self.store.dead()
        self.sweeps += 1
        for dead in found:
            settled = await self.store.rescue(dead, self.who, self.reason(dead))
            if settled is None:
                continue  # another rescuer was first, or it came back
            self.counts["instances"] += 1
            self.counts["released"] += settled.released
            self.counts["retried"] += len(settled.retried)
            self.counts["failed"] += len(settled.failed)
            log.warning(
                "rescued instance %s of worker %s (%s), silent since %s: %d released,"
                " retried %s, failed %s", dead.instance, dead.name, dead.host,
                _when(dead.heartbeat), settled.released, settled.retried, settled.failed,
            )  # fmt: skip
            total.add(settled)
        if total.targets:
            self.poke(sorted(total.targets))
        return total

    def reason(self, dead: Instance) -> str:
        return (
            f"worker {dead.name} ({dead.host}) stopped heartbeating at"
            f" {_when(dead.heartbeat)}; rescued by {self.who}"
        )

    def describe(self) -> dict[str, Any]:
        return {"by": self.who, "interval": self.interval, "sweeps": self.sweeps, **self.counts}


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


async def run_rescuer(rescuer: Rescuer, table: str) -> None:
    try:
        await open_store(rescuer.store, rescuer.store.has_table, f"{table}_workers", "rescuer")
        log.info("rescuer of %s looks for dead instances every %g s", rescuer.who,
                 rescuer.interval)  # fmt: skip
        await rescuer.run()
    finally:
        await rescuer.store.close()


def start_rescuer(
    url: DatabaseURL, table: str, poke: Callable[[list[str]], None], who: str, interval: float
) -> tuple[Rescuer, asyncio.Task[None]]:
    """A daemon's rescuer, as a task of its own (jobd.runtime.background)."""
    rescuer = Rescuer(InstanceStore(url, table, pool_size=1), who, poke, interval)
    return rescuer, start_background(run_rescuer(rescuer, table), "rescuer")
