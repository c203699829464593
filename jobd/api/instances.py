"""Worker instances in the job API (AsyncJobd inherits them): listing them, and settling
the rows of a worker that will not come back (`jobctl recover`)."""

from __future__ import annotations

from typing import Any

from jobd.store.catalog import JobCatalog
from jobd.store.instances import InstanceStore
from jobd.store.pool import StorageError
from jobd.store.settle import Decide, Settled, rescue_rules


class LeaseHeld(Exception):
    """A running instance of the worker still holds its lease: it may be alive."""


class InstanceMethods:
    """Needs `catalog` and `table` of the job API."""

    catalog: JobCatalog
    table: str
    _instances: InstanceStore | None = None

    async def _instance_store(self) -> InstanceStore:
        if self._instances is None:
            store = InstanceStore(self.catalog.url, self.table, pool_size=1)
            await store.connect()
            self._instances = store
        return self._instances

    async def _close_instances(self) -> None:
        if self._instances is not None:
            await self._instances.close()
            self._instances = None

    async def workers(self, limit: int = 100) -> list[dict[str, Any]]:
        """Worker instances, running ones first: name, host, pid, version, state,
        heartbeat and its age (s, the database's clock), lease, started, ended,
        rescued_by, and `held`, the jobs it holds."""
        return await (await self._instance_store()).list(limit)

    async def recover_worker(
        self, worker: str, *, max_attempts: int | None = None, force: bool = False
    ) -> Settled:
        """Settle the rows of `worker`, which will not come back, by the rules of its own
        restart (jobd.worker.restart): every running instance of its name is marked
        rescued.  `max_attempts`: the starts a running job may have had and still go back
        to waiting, for every target (default: what each instance recorded of its
        targets; 1 for rows claimed before instances were recorded).  Raises LeaseHeld
        when an instance still holds its lease, unless `force`."""
        store = await self._instance_store()
        if not await store.table_exists(self.table):
            raise StorageError("the table does not exist")
        if not await store.has_table():
            raise StorageError(f"the table {self.table}_workers does not exist (see schema.sql)")
        running = await store.others(worker, "")
        held = [i for i in running if not i.expired]
        if held and not force:
            raise LeaseHeld(
                f"instance {held[0].instance} of worker {worker} on {held[0].host} still holds"
                f" its lease of {held[0].lease:g} s: it may be alive"
            )
        reason = f"worker {worker} stopped while the job was running"
        by = f"jobctl recover of worker {worker}"
        override = _max_attempts_rule(max_attempts) if max_attempts is not None else None
        settled = Settled()
        for instance in running:
            done = await store.rescue(instance, by, reason, override, expired_only=False)
            if done is not None:
                settled.add(done)
        unrecorded = override or _max_attempts_rule(1)
        settled.add(await store.settle_unrecorded(worker, reason, unrecorded))
        return settled


def _max_attempts_rule(max_attempts: int) -> Decide:
    """The same rule for every target: starts left below `max_attempts`."""
    every = rescue_rules({})

    def decide(target: str, attempts: int, rescues: int) -> str | None:
        verdict = every(target, 0, rescues)  # the rescue count still applies
        if verdict:
            return verdict
        return None if attempts < max_attempts else ""

    return decide
