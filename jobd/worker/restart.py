"""A worker's start: what its earlier instances left behind (kill -9, a power loss) is
settled at once, without waiting for a lease to run out.

Its leftover job processes on this host are stopped first, so no job runs twice at the
same time; then the rows of every earlier running instance of its name on this host, or
whose lease has run out elsewhere, are settled like a rescue's, and so are rows its name
claimed before instances were recorded.  An earlier instance on another host that still
holds a lease may be alive: its rows wait for the rescue.
"""

from __future__ import annotations

import logging
import socket

from jobd.config import WorkerConfig
from jobd.store.instances import InstanceStore
from jobd.store.settle import Settled, rescue_rules
from jobd.worker.heartbeat import rescue_options
from jobd.worker.leftovers import find_leftovers, stop_leftovers
from jobd.worker.persist import persist
from jobd.worker.queues import TargetQueue
from jobd.worker.runner import instance_id

log = logging.getLogger("jobd.worker")


async def settle_earlier_instances(
    config: WorkerConfig, store: InstanceStore, instance: str, targets: dict[str, TargetQueue]
) -> Settled:
    leftovers = find_leftovers(instance_id(config))
    if leftovers:
        log.warning("stopping %d processes left by a previous run", len(leftovers))
        await stop_leftovers(leftovers, config.kill_grace)
    name, host = config.name, socket.gethostname()
    reason = f"worker {name} stopped while the job was running"
    settled = Settled()
    by = f"the restart of worker {name} on {host}"
    for other in await persist("recovery", lambda: store.others(name, instance)):
        if other.host != host and not other.expired:
            log.warning(
                "instance %s of worker %s on %s still holds its lease: its rows wait for the"
                " rescue", other.instance, name, other.host,
            )  # fmt: skip
            continue
        done = await persist(
            "recovery", lambda o=other: store.rescue(o, by, reason, expired_only=False)
        )
        if done is not None:
            settled.add(done)
    own_rules = rescue_rules(rescue_options(targets))
    settled.add(await persist("recovery", lambda: store.settle_unrecorded(name, reason, own_rules)))
    if settled:
        log.warning(
            "recovered rows of a previous run: %d released, retried %s, failed %s",
            settled.released, settled.retried, settled.failed,
        )  # fmt: skip
    return settled
