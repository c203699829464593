"""Prometheus metrics of a real worker (`metrics: HOST:PORT`) and a real master (at its
`http:` address), scraped over HTTP and parsed with prometheus-client's own parser."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from jobd.users import RECHECK

from conftest import ROOT, free_port, jobctl, wait_for
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(90)


def scrape(address: str, auth: tuple[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of http://ADDRESS/metrics."""
    request = urllib.request.Request(f"http://{address}/metrics")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def status_code(address: str, auth: tuple[str, str] | None = None) -> int:
    try:
        scrape(address, auth)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_worker_counts_its_jobs_claims_slots_and_memory(jobs, start_worker):
    address = f"127.0.0.1:{free_port()}"
    command = "sh -c '[ {target} != slow ] || sleep 30; [ {id} -ne 4 ]'"
    worker = start_worker({"t": 2, "slow": 3}, command=command, metrics=address)
    ids = jobs.insert("t", 4)  # job 4 fails
    worker.request("poll")
    jobs.wait_done(ids)
    (slow,) = jobs.insert("slow")
    worker.request("poll")
    wait_for(lambda: worker.request("status")["running"] == [slow], 10, "the slow job running")
    metrics = scrape(address)
    assert value(metrics, "jobd_jobs_finished_total", target="t", slot="default", result="ok") == 3
    assert (
        value(metrics, "jobd_jobs_finished_total", target="t", slot="default", result="fail") == 1
    )
    assert value(metrics, "jobd_job_duration_seconds_count", target="t", slot="default") == 4
    rows = jobs.rows(f"id IN ({', '.join(map(str, ids))})")
    total = sum(r["duration_ms"] for r in rows) / 1000
    measured = value(metrics, "jobd_job_duration_seconds_sum", target="t", slot="default")
    assert measured == pytest.approx(total, abs=0.005)  # the rows' milliseconds, rounded
    assert value(metrics, "jobd_jobs_running", target="slow", slot="default") == 1
    assert value(metrics, "jobd_jobs_running", target="t", slot="default") == 0
    assert value(metrics, "jobd_slot_capacity", target="slow", slot="default") == 3
    status = worker.request("status")
    claimed = sum(value(metrics, "jobd_claimed_jobs_total", kind=k) for k in ("by_target",))
    assert claimed == status["claimed"]["by_target"] == 5
    assert value(metrics, "jobd_claims_total", kind="by_target") >= 2
    assert value(metrics, "jobd_claim_duration_seconds_count", kind="by_target") >= 2
    assert value(metrics, "jobd_outcomes_held") == 0
    assert value(metrics, "jobd_fenced") == 0
    rss = value(metrics, "process_resident_memory_bytes")
    assert rss == pytest.approx(status["rss"], rel=0.2)
    assert value(metrics, "process_open_fds") > 3


def test_a_worker_counts_database_errors_and_holds_outcomes_through_an_outage(jobs, start_worker):
    address = f"127.0.0.1:{free_port()}"
    url = jobs.db.url
    proxy = TcpProxy((url.host, url.port))
    try:
        through = jobs.db.url_string.replace(f":{url.port}/", f":{proxy.port}/")
        worker = start_worker({"t": 2}, command="sleep 0.5", database=through, metrics=address)
        ids = jobs.insert("t", 2)
        worker.request("poll")
        wait_for(lambda: len(worker.request("status")["running"]) == 2, 10, "two jobs running")
        proxy.cut()
        wait_for(lambda: value(scrape(address), "jobd_outcomes_held") == 2, 10, "outcomes held")
        # The outcomes are held as soon as the jobs end; the write that fails comes after.
        wait_for(
            lambda: (
                scrape(address).get(
                    ("jobd_database_errors_total", (("operation", "writing outcomes"),)), 0
                )
                >= 1
            ),
            10,
            "a failed write of the outcomes counted",
        )
        proxy.restore()
        jobs.wait_done(ids)
        wait_for(lambda: value(scrape(address), "jobd_outcomes_held") == 0, 10, "written")
        assert value(scrape(address), "jobd_database_reconnects_total") >= 1
    finally:
        proxy.close()


def test_worker_metrics_beyond_this_host_need_users_and_then_basic_auth(
    jobs, start_worker, tmp_path
):
    users = tmp_path / "users"
    jobctl("dashboard-user", "add", "prom", "--role", "viewer", "--password-stdin",
           "--file", users, input="s3cret\n")  # fmt: skip
    config = {
        "listen": f"tcp://127.0.0.1:{free_port()}", "database": jobs.db.url_string,
        "table": jobs.table, "launcher": {"command": "true"}, "targets": {"t": 1},
        "metrics": f"0.0.0.0:{free_port()}",
    }  # fmt: skip
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "jobd", "--check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert "metrics: 0.0.0.0" in done.stderr and "http_users" in done.stderr
    address = f"127.0.0.1:{free_port()}"
    start_worker({"t": 1}, metrics=address, http_users=str(users))
    assert status_code(address) == 401
    assert status_code(address, ("prom", "wrong")) == 401
    assert status_code(address, ("prom", "s3cret")) == 200
    # The file is read again when it changes: a new password, then no user at all.
    jobctl("dashboard-user", "add", "prom", "--role", "viewer", "--password-stdin",
           "--file", users, input="n3w\n")  # fmt: skip
    time.sleep(RECHECK + 0.2)
    assert status_code(address, ("prom", "n3w")) == 200
    assert status_code(address, ("prom", "s3cret")) == 401  # remembered no longer
    jobctl("dashboard-user", "remove", "prom", "--file", users)
    time.sleep(RECHECK + 0.2)
    assert status_code(address, ("prom", "n3w")) == 401
    for _ in range(2):  # five failures in a minute: then refused outright
        status_code(address, ("prom", "wrong"))
    assert status_code(address, ("prom", "n3w")) == 429


def test_the_master_counts_its_traffic_and_the_queue_from_one_cached_query(
    jobs, start_master, start_worker
):
    http = f"127.0.0.1:{free_port()}"
    master = start_master(database=jobs.db.url_string, table=jobs.table, http=http)
    worker = start_worker({"t": 1}, command="sh -c '[ {id} -ne 2 ]'", master=master.address)
    wait_for(lambda: "w0" in master.request("status")["workers"], 10, "w0 registered")
    ids = jobs.insert("t", 3)  # job 2 fails
    master.request("poke", {"targets": ["t"]})
    jobs.wait_done(ids)
    old = int(time.time()) - 40
    jobs.insert("idle", 4, time_created=old)  # a target no worker serves
    metrics = scrape(http)
    assert value(metrics, "jobd_master_workers") == 1
    assert value(metrics, "jobd_master_pokes_total") >= 1
    assert value(metrics, "jobd_master_polls_sent_total") >= 1
    # The events of the last jobs may still be on their way: the counter catches up.
    wait_for(
        lambda: (
            value(scrape(http), "jobd_master_events_published_total")
            == master.request("status")["events"]["published"]
            > 0
        ),
        10,
        "the events published counted",
    )
    assert value(metrics, "jobd_jobs_waiting", target="idle") == 4
    assert value(metrics, "jobd_oldest_waiting_seconds", target="idle") >= 40
    assert value(metrics, "jobd_jobs_failed_recently", target="t") == 1
    reads = value(scrape(http), "jobd_master_queue_reads_total")
    assert reads >= 1
    for _ in range(3):  # within the cache's 5 s: no new query
        assert value(scrape(http), "jobd_master_queue_reads_total") == reads
    assert worker.request("status")["name"] == "w0"


def documented_metrics() -> set[str]:
    """The `jobd_` names in the metrics table of docs/operations.md."""
    table = (ROOT / "docs" / "operations.md").read_text().split("## Metrics", 1)[1]
    table = table.split("\n## ", 1)[0]
    return set(re.findall(r"`(jobd_\w+)`", table))


def families(address: str) -> set[str]:
    """The `jobd_` metric names http://ADDRESS/metrics declares, samples or not."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return set(re.findall(r"^# TYPE (jobd_\w+) ", text, re.MULTILINE))


def test_the_documented_metrics_are_the_exported_ones_and_grafana_uses_them(
    jobs, start_master, start_worker
):
    http = f"127.0.0.1:{free_port()}"
    master = start_master(database=jobs.db.url_string, table=jobs.table, http=http)
    address = f"127.0.0.1:{free_port()}"
    start_worker({"t": 1}, master=master.address, metrics=address)
    wait_for(lambda: "w0" in master.request("status")["workers"], 10, "w0 registered")
    # A counter's TYPE line may name it with or without `_total`.
    exported = {name.removesuffix("_total") for name in families(address) | families(http)}
    documented = {name.removesuffix("_total") for name in documented_metrics()}
    assert exported == documented
    grafana = (ROOT / "contrib" / "grafana-jobd.json").read_text()
    json.loads(grafana)
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"jobd_\w+", grafana)}
    used = {name.removesuffix("_total") for name in used}
    assert used <= documented, used - documented
