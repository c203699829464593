"""A worker's Prometheus metrics (`metrics: HOST:PORT` in its config; the names in
docs/operations.md, "Metrics").  Events are counted as they happen (a job's outcome
written, a claim); the state (running jobs, slot capacity, outcomes held, database
errors) is read from the worker's parts at each scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobd.jobs import Job, Outcome, Retry
from jobd.runtime.command import StartupError
from jobd.runtime.http import FailedLogins, StartupFailed, basic_auth, metrics_handler, serve
from jobd.users import UsersError, UsersFile
from jobd.worker.persist import COUNTS

# The _created series of each counter say nothing a scrape's own time does not.
disable_created_metrics()

if TYPE_CHECKING:  # the worker builds its metrics with itself
    from jobd.config import WorkerConfig
    from jobd.worker.worker import Worker

log = logging.getLogger("jobd")

#: Job durations, seconds: from a spawn's few milliseconds to an hour.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0,
)  # fmt: skip
#: Claim durations, seconds: round trips to the database.
CLAIM_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class WorkerMetrics:
    def __init__(self, worker: Worker) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # RSS, open descriptors, CPU
        self.finished = Counter(
            "jobd_jobs_finished", "Job starts that ended, by result: ok, fail, or retry (a"
            " failed start that goes back to waiting).", ["target", "slot", "result"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "jobd_job_duration_seconds", "How long the starts of jobs ran.", ["target", "slot"],
            buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.claims = Counter(
            "jobd_claims", "Claims that went through, by kind: by_target or named (by id).",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.claimed = Counter(
            "jobd_claimed_jobs", "Jobs claimed, by kind of claim.", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.claim_seconds = Histogram(
            "jobd_claim_duration_seconds", "How long claims took, by kind.", ["kind"],
            buckets=CLAIM_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(WorkerState(worker))
        worker.aftermath.on_written = self.written
        worker.claimer.on_claim = self.claim

    def written(self, job: Job, outcome: Outcome, retry: Retry | None) -> None:
        result = "retry" if retry is not None else outcome.result
        self.finished.labels(job.target, job.slot, result).inc()
        if outcome.duration is not None:
            self.duration.labels(job.target, job.slot).observe(outcome.duration)

    def claim(self, kind: str, jobs: int, seconds: float) -> None:
        self.claims.labels(kind).inc()
        self.claimed.labels(kind).inc(jobs)
        self.claim_seconds.labels(kind).observe(seconds)


class WorkerState(Collector):
    """What the worker holds now, read at each scrape."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        slots = ["target", "slot"]
        running = GaugeMetricFamily("jobd_jobs_running", "Jobs running, by slot.", labels=slots)
        queued = GaugeMetricFamily(
            "jobd_jobs_queued", "Jobs claimed and waiting in their slot to start.", labels=slots
        )
        capacity = GaugeMetricFamily(
            "jobd_slot_capacity", "The concurrency of each slot.", labels=slots
        )
        for name, target in worker.targets.items():
            for slot, queue in target.slots.items():
                running.add_metric([name, slot], len(queue.running))
                queued.add_metric([name, slot], len(queue.queued))
                capacity.add_metric([name, slot], queue.concurrency)
        yield from (running, queued, capacity)
        yield GaugeMetricFamily(
            "jobd_outcomes_held", "Outcomes not written yet (held while the database is away).",
            value=worker.writer.pending,
        )  # fmt: skip
        errors = CounterMetricFamily(
            "jobd_database_errors", "Database operations that failed, by operation.",
            labels=["operation"],
        )  # fmt: skip
        errors.add_metric(["claim"], worker.claimer.failures)
        for operation, count in sorted(COUNTS.failures.items()):
            errors.add_metric([operation], count)
        yield errors
        yield CounterMetricFamily(
            "jobd_database_reconnects", "Operations that went through after failing: the"
            " database back.", value=COUNTS.recovered,
        )  # fmt: skip
        yield CounterMetricFamily(
            "jobd_fenced_writes", "Writes that changed nothing: their rows were taken back.",
            value=worker.fenced_writes.count,
        )  # fmt: skip
        beat = worker.heartbeat.describe()
        yield GaugeMetricFamily(
            "jobd_heartbeat_age_seconds", "Seconds since the last heartbeat was written.",
            value=beat["since_heartbeat"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "jobd_fenced", "1 while the fence is closed (no heartbeat for half the lease).",
            value=int(beat["fenced"]),
        )  # fmt: skip


async def serve_metrics(config: WorkerConfig, worker: Worker) -> web.AppRunner:
    """`metrics: HOST:PORT`: Prometheus metrics at /metrics (basic auth with http_users)."""
    assert config.metrics.address is not None
    handler = metrics_handler(WorkerMetrics(worker).registry)
    try:
        if config.metrics.users is not None:
            handler = basic_auth(UsersFile(config.metrics.users), FailedLogins())(handler)
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = await serve(config.metrics, app)
    except (UsersError, StartupFailed) as exc:
        raise StartupError(str(exc)) from None
    log.info("metrics at http://%s/metrics", config.metrics.address)
    return runner
