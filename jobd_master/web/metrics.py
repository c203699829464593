"""The master's Prometheus metrics, at /metrics of its HTTP address (the names in
docs/operations.md, "Metrics"): its registry and traffic, read from the master at each
scrape, and the queue by target, from one grouped query of the table (DashboardStore.
queue) cached for CACHE_SECONDS, so scrapes never cost a query per target."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobd.store.catalog import RECENT_FAILURES, TargetQueue
from jobd.store.dashboard import DashboardStore
from jobd.store.pool import StorageError

# The _created series of each counter say nothing a scrape's own time does not.
disable_created_metrics()

if TYPE_CHECKING:
    from jobd_master.master import Master

#: Seconds the queue read from the table is reused for.
CACHE_SECONDS = 5.0


class MasterMetrics(Collector):
    def __init__(self, master: Master, store: DashboardStore | None) -> None:
        self.master = master
        self.store = store
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(self)
        self.queue: list[TargetQueue] = []
        self._read_at = -CACHE_SECONDS
        #: Reads of the table for the metrics (each one query), and those that failed.
        self.reads = 0
        self.read_errors = 0

    async def refresh(self) -> None:
        """Read the queue again if the cached one is older than CACHE_SECONDS."""
        if self.store is None or time.monotonic() - self._read_at < CACHE_SECONDS:
            return
        self._read_at = time.monotonic()
        try:
            self.queue = await self.store.queue()
            self.reads += 1
        except StorageError:
            self.read_errors += 1

    def collect(self) -> Iterator[Metric]:
        master = self.master
        yield GaugeMetricFamily(
            "jobd_master_workers", "Workers registered now.", value=len(master.registry)
        )
        yield CounterMetricFamily(
            "jobd_master_pokes", "Pokes handled (clients, schedules, rescues).",
            value=master.pokes,
        )  # fmt: skip
        yield CounterMetricFamily(
            "jobd_master_polls_sent", "Polls sent to workers.", value=master.polls_sent()
        )
        published = master.events.published if master.events is not None else 0
        yield CounterMetricFamily(
            "jobd_master_events_published", "Job events published.", value=published
        )
        fired = master.scheduler.fired if master.scheduler is not None else 0
        yield CounterMetricFamily(
            "jobd_master_schedules_fired", "Jobs the master's scheduler created.", value=fired
        )
        rescues = master.rescuer.counts if master.rescuer is not None else {}
        yield CounterMetricFamily(
            "jobd_master_rescued_instances", "Dead worker instances whose rows were settled.",
            value=rescues.get("instances", 0),
        )  # fmt: skip
        rows = CounterMetricFamily(
            "jobd_master_rescued_rows", "Rows of dead instances settled, by how.", labels=["how"]
        )
        for how in ("released", "retried", "failed"):
            rows.add_metric([how], rescues.get(how, 0))
        yield rows
        if self.store is not None:
            yield from self._queue()

    def _queue(self) -> Iterator[Metric]:
        now = time.time()
        waiting = GaugeMetricFamily(
            "jobd_jobs_waiting", "Rows waiting, by target.", labels=["target"]
        )
        oldest = GaugeMetricFamily(
            "jobd_oldest_waiting_seconds", "Age of the oldest waiting row, by target.",
            labels=["target"],
        )  # fmt: skip
        failed = GaugeMetricFamily(
            "jobd_jobs_failed_recently", f"Jobs failed in the last {RECENT_FAILURES} s, by target.",
            labels=["target"],
        )  # fmt: skip
        for target in self.queue:
            waiting.add_metric([target.target], target.waiting)
            failed.add_metric([target.target], target.failed_recently)
            age = target.oldest_age(now)
            if age is not None:
                oldest.add_metric([target.target], age)
        yield from (waiting, oldest, failed)
        yield CounterMetricFamily(
            "jobd_master_queue_reads", "Reads of the table for these metrics.", value=self.reads
        )
