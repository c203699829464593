"""jobctl end to end against a real master and real workers, in both output modes.

Most calls run jobctl's click command in-process (CliRunner: same parsing, same exit
statuses, no interpreter start-up per call); a few run `python -m jobctl` for real."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import jobd
from jobctl.cli import main, normalize_args

from conftest import Daemon, free_port, jobctl, wait_for


def jobctl_json(*args: Any, status: int = 0) -> Any:
    return json.loads(jobctl("--json", *args, status=status).stdout)


def table_rows(text: str) -> list[list[str]]:
    """Rows of the first aligned table in the output (cells split on runs of 2+ spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"[A-Z][A-Z ]*", line))
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


@pytest.fixture
def cluster(jobs, start_master, start_worker) -> tuple[Daemon, Daemon, Daemon]:
    master = start_master(ping_interval=0.5)
    cmd = "sh -c 'echo out-{id}; [ {target} != slow ] || sleep 30'"
    w0 = start_worker({"a": 2, "slow": 1}, cmd, master=master.address)
    w1 = start_worker({"b": {"low": 1, "high": 2}}, cmd, master=master.address)
    wait_for(lambda: set(master.request("status")["workers"]) == {"w0", "w1"}, 5, "registered")
    return master, w0, w1


def test_normalize_args_keeps_the_command_out_of_the_address():
    commands = main.commands
    assert normalize_args(["--master", "status"], commands) == ["--master=", "status"]
    assert normalize_args(["--worker"], commands) == ["--worker="]
    assert normalize_args(["--worker", "h:7080", "ping"], commands) == [
        "--worker", "h:7080", "ping",
    ]  # fmt: skip
    assert normalize_args(["--json", "--master", "--timeout", "1", "status"], commands) == [
        "--json", "--master=", "--timeout", "1", "status",
    ]  # fmt: skip
    assert normalize_args(["--", "--master", "x"], commands) == ["--", "--master", "x"]


def test_master_commands_in_both_output_modes(jobs, cluster):
    master, w0, w1 = cluster
    m = ["--master", master.address]

    # status and list-workers
    out = jobctl(*m, "status").stdout
    assert f"master:           {master.address}" in out
    rows = table_rows(out)
    assert rows[0][:3] == ["NAME", "ADDRESS", "TARGETS"]
    assert [r[:3] for r in rows[1:]] == [
        ["w0", w0.address, "a:2 slow:1"], ["w1", w1.address, "b:high=2,low=1"],
    ]  # fmt: skip
    status = jobctl_json(*m, "status")
    assert set(status["workers"]) == {"w0", "w1"} and status["version"] == jobd.__version__
    polled = jobctl_json(*m, "status", "--poll-workers")
    assert polled["workers"]["w1"]["status"]["name"] == "w1"
    assert "RUNNING" in jobctl(*m, "status", "--poll-workers").stdout
    assert [r[0] for r in table_rows(jobctl(*m, "list-workers").stdout)] == ["NAME", "w0", "w1"]
    assert set(jobctl_json(*m, "list-workers")) == {"w0", "w1"}

    # targets: every served target with its workers and their slots
    assert jobctl_json(*m, "targets") == {
        "a": {"description": "", "workers": {"w0": {"default": 2}}},
        "b": {"description": "", "workers": {"w1": {"low": 1, "high": 2}}},
        "slow": {"description": "", "workers": {"w0": {"default": 1}}},
    }  # fmt: skip
    out = jobctl(*m, "targets").stdout
    assert [r[0] for r in table_rows(out)] == ["TARGET", "a", "b", "slow"]
    assert "w1:high=2,low=1" in out and "w0:2" in out
    assert jobctl(*m, "list-targets").stdout == out  # the command's former name

    # poke: only the serving workers; a target nobody serves is remembered
    (a_job,) = jobs.insert("a")
    assert table_rows(jobctl(*m, "poke", "a").stdout) == [["WORKER", "RESULT"], ["w0", "poll sent"]]
    jobs.wait_done([a_job])
    assert jobctl_json(*m, "poke", "b", "zz") == {
        "workers": ["w1"], "errors": {}, "remembered": ["zz"],
    }  # fmt: skip
    assert "remembered for the first that registers" in jobctl(*m, "poke", "zz").stdout

    # pause / continue fan out
    assert jobctl_json(*m, "ping")["name"] == "jobd-master"
    assert jobctl_json(*m, "pause", "a")["workers"] == {"w0": {"targets": ["a"]}}
    assert table_rows(jobctl(*m, "pause", "b").stdout)[1] == ["w1", "paused", "b"]
    assert w1.request("status")["targets"]["b"]["paused"] is True
    reply = jobctl_json(*m, "continue")
    assert set(reply["workers"]) == {"w0", "w1"} and reply["errors"] == {}
    assert w1.request("status")["targets"]["b"]["paused"] is False
    jobctl(*m, "continue", "a")  # human mode: exit 0

    # run-manual through the master needs the target
    ids = jobs.insert("b", 2, status="manual", slot="low")
    out = jobctl(*m, "run-manual", "--target", "b", *ids).stdout
    rows = table_rows(out)
    assert rows[0] == ["ID", "RESULT", "CODE", "SIGNAL", "DURATION", "WORKER"]
    assert [(r[0], r[1], r[2], r[5]) for r in rows[1:]] == [(str(i), "ok", "0", "w1") for i in ids]
    assert f"job {ids[0]} stdout:\n    out-{ids[0]}" in out
    (more,) = jobs.insert("a", status="manual")
    reply = jobctl_json(*m, "run-manual", "--target", "a", more)
    assert reply["jobs"][str(more)]["worker"] == "w0" and reply["errors"] == {}
    # an id that is not manual: the daemon reports an error -> exit 1, in both modes
    reply = jobctl_json(*m, "run-manual", "--target", "a", more, status=1)
    assert "not manual" in reply["errors"][str(more)]
    assert "not manual" in jobctl(*m, "run-manual", "--target", "a", more, status=1).stdout

    # send-signal reaches the worker running the job
    slow = jobs.insert("slow", 2)
    jobctl(*m, "poke", "slow")
    wait_for(lambda: w0.request("status")["running"], 5, "a slow job running")
    (running,) = w0.request("status")["running"]
    other = next(i for i in slow if i != running)
    assert table_rows(jobctl(*m, "send-signal", "--target", "slow", running, "TERM").stdout) == [
        ["ID", "SIGNAL", "WORKER"], [str(running), "SIGTERM", "w0"],
    ]  # fmt: skip
    jobs.wait_done([running])
    wait_for(lambda: w0.request("status")["running"] == [other], 5, "the next slow job")
    reply = jobctl_json(*m, "send-signal", "--target", "slow", other, "9")
    assert reply == {"jobs": {str(other): {"signal": "SIGKILL", "worker": "w0"}}, "errors": {}}
    assert jobs.wait_done([other])[0]["sig"] == "SIGKILL"
    reply = jobctl_json(*m, "send-signal", "--target", "slow", other, "TERM", status=1)
    assert "not running on any live worker" in reply["errors"][str(other)]


def test_worker_commands_in_both_output_modes(jobs, cluster):
    master, w0, _ = cluster
    w = ["--worker", w0.address]

    assert jobctl(*w, "ping").stdout == "w0 0.2.0 answers\n"
    out = jobctl(*w, "status").stdout
    assert "worker:         w0" in out
    assert table_rows(out)[1:] == [
        ["a", "default", "no", "2", "0", "0"], ["slow", "default", "no", "1", "0", "0"],
    ]  # fmt: skip
    assert jobctl_json(*w, "status")["name"] == "w0"
    assert [r[0] for r in table_rows(jobctl(*w, "targets").stdout)] == ["TARGET", "a", "slow"]
    assert jobctl_json(*w, "targets")["a"]["workers"] == {"w0": {"default": 2}}
    assert set(jobctl_json(*w, "targets")) == {"a", "slow"}

    (job,) = jobs.insert("a")
    assert jobctl(*w, "poll", "a").stdout == "polling: a\n"
    jobs.wait_done([job])
    assert jobctl_json(*w, "poll") == {"targets": ["a", "slow"]}
    assert jobctl(*w, "pause", "a").stdout == "paused: a\n"
    assert jobctl_json(*w, "pause", "a") == {"targets": ["a"]}
    assert jobctl_json(*w, "continue", "a") == {"targets": ["a"]}
    assert jobctl(*w, "continue").stdout == "continued: a, slow\n"
    assert jobctl_json(*w, "ping")["name"] == "w0"

    assert jobctl(*w, "add-target", "c", "low=1", "high=3").stdout == (
        "target c: slots low=1,high=3\n"
    )
    assert jobctl_json(*w, "add-target", "d", "4") == {"target": "d", "slots": {"default": 4}}
    # the master hears of it through the worker's re-registration
    wait_for(lambda: "d" in master.request("status")["workers"]["w0"]["targets"], 5, "d")
    assert jobctl(*w, "set-target-concurrency", "c", "2", "--slot", "low").stdout == (
        "target c: slots low=2,high=3\n"
    )
    assert jobctl_json(*w, "set-target-concurrency", "d", "5")["slots"] == {"default": 5}
    assert jobctl(*w, "remove-target", "c").stdout.startswith("removed target c: 0 queued")
    assert jobctl_json(*w, "remove-target", "d")["target"] == "d"

    ids = jobs.insert("a", 2, status="manual")
    rows = table_rows(jobctl(*w, "run-manual", *ids).stdout)
    assert [r[:3] for r in rows] == [["ID", "RESULT", "CODE"]] + [[str(i), "ok", "0"] for i in ids]
    (one,) = jobs.insert("a", status="manual")
    assert jobctl_json(*w, "run-manual", one)["jobs"][str(one)]["stdout"] == f"out-{one}\n"

    (slow,) = jobs.insert("slow")
    jobctl(*w, "poll", "slow")
    # `running` in the row comes right before the spawn; the worker's status, right after.
    wait_for(lambda: slow in w0.request("status")["running"], 5, "slow job running")
    assert table_rows(jobctl(*w, "send-signal", slow, "SIGTERM").stdout)[1][:2] == [
        str(slow), "SIGTERM",
    ]  # fmt: skip
    assert jobs.wait_done([slow])[0]["sig"] == "SIGTERM"
    reply = jobctl_json(*w, "send-signal", slow, "KILL", status=1)
    assert reply["jobs"] == {} and "not running" in reply["errors"][str(slow)]

    # an error answer: exit 1 with the daemon's message
    result = jobctl(*w, "remove-target", "nope", status=1)
    assert "does not serve nope (not_found)" in result.stderr
    result = jobctl("--json", *w, "pause", "nope", status=1)
    assert result.stdout == "" and "not_found" in result.stderr


def test_usage_errors_exit_2():
    w = ["--worker", "tcp://127.0.0.1:1"]
    m = ["--master", "tcp://127.0.0.1:1"]
    cases = [
        ([*w, "poke"], "poke is a master command"),
        (["poll"], "poll is a worker command"),  # the master is the default
        ([*m, "add-target", "x", "1"], "add-target is a worker command"),
        ([*m, "remove-target", "x"], "remove-target is a worker command"),
        ([*m, "set-target-concurrency", "x", "1"], "set-target-concurrency is a worker"),
        ([*w, "list-workers"], "list-workers is a master command"),
        ([*w, "status", "--poll-workers"], "--poll-workers is a master option"),
        ([*m, "run-manual", "1"], "needs --target TARGET"),
        ([*m, "send-signal", "1", "TERM"], "needs --target TARGET"),
        ([*w, "run-manual", "--target", "a", "1"], "--target is a master option"),
        ([*w, "send-signal", "1", "NOPE"], "not a signal"),
        ([*w, "pause", "bad name!"], "expected a name"),
        ([*w, "run-manual", "0"], "expected a job id"),
        ([*w, "run-manual", "x"], "'x' is not a valid integer"),
        ([*w, "add-target", "c", "low=x"], "expected CONCURRENCY or SLOT=CONCURRENCY"),
        ([*w, "add-target", "c", "0"], "concurrency must be between"),
        ([*w, *m, "status"], "--master and --worker exclude each other"),
        (["--timeout", "0", "status"], "--timeout: expected a number of seconds > 0"),
        (["--worker", "nowhere", "status"], "--worker: expected an address like tcp://HOST:PORT"),
        (["frobnicate"], "No such command"),
    ]
    for args, message in cases:
        result = jobctl(*args, status=2)
        assert message in result.stderr, (args, result.stderr)


def test_config_file_gives_defaults(tmp_path, cluster):
    master, w0, _ = cluster
    path = tmp_path / "jobctl.yaml"
    path.write_text(f"master: {master.address}\nworker: {w0.address}\ntimeout: 2\n")
    assert jobctl("--config", path, "ping").stdout == "jobd-master 0.2.0 answers\n"
    assert jobctl("--config", path, "--master", "ping").stdout.startswith("jobd-master")
    assert jobctl("--config", path, "--worker", "ping").stdout.startswith("w0 ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("master: tcp://127.0.0.1:1\ncolour: blue\n")
    assert f"{bad}: colour: unknown key" in jobctl("--config", bad, "ping", status=2).stderr
    bad.write_text("timeout: soon\n")
    assert "timeout: expected a number" in jobctl("--config", bad, "ping", status=2).stderr
    missing = tmp_path / "missing.yaml"
    assert "cannot read" in jobctl("--config", missing, "ping", status=2).stderr


def test_no_answer_exits_3_and_never_hangs(start_worker):
    nobody = f"tcp://127.0.0.1:{free_port()}"
    for option in ("--master", "--worker"):
        for command in (["status"], ["pause"], ["run-manual", "--target", "t", "1"]):
            if option == "--worker" and command[0] == "run-manual":
                command = ["run-manual", "1"]
            began = time.monotonic()
            result = jobctl("--timeout", "0.3", option, nobody, *command, status=3)
            # It gave up after its timeout, not before and not much after.
            assert 0.3 <= time.monotonic() - began < 2.0, command
            assert result.stderr == f"jobctl: no answer from {nobody} within 0.3 s\n"

    # A daemon that is there but does not answer (stopped): same, after the timeout.
    worker = start_worker({"t": 1})
    worker.signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        result = jobctl("--timeout", "0.5", "--json", "--worker", worker.address, "status",
                        status=3)  # fmt: skip
        assert 0.5 <= time.monotonic() - began < 2.5
        assert result.stderr == f"jobctl: no answer from {worker.address} within 0.5 s\n"
    finally:
        worker.signal(signal.SIGCONT)
    assert worker.request("status")["name"] == "w0"  # it answers again once continued


def test_python_m_jobctl_gives_a_shell_its_exit_statuses_and_streams(cluster):
    """`python -m jobctl` as a process: exit statuses and streams as a shell sees them."""
    master, _, _ = cluster

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobctl", *args], capture_output=True, text=True, timeout=20
        )

    done = run("--master", master.address, "--json", "list-workers")
    assert done.returncode == 0 and set(json.loads(done.stdout)) == {"w0", "w1"}
    done = run("--master", master.address, "pause", "nobody")
    assert done.returncode == 1 and "no live worker serves: nobody" in done.stderr
    done = run("--worker", master.address, "poke")
    assert done.returncode == 2 and "poke is a master command" in done.stderr
    nobody = f"tcp://127.0.0.1:{free_port()}"
    done = run("--timeout", "0.3", "--master", nobody, "status")
    assert done.returncode == 3 and done.stderr == f"jobctl: no answer from {nobody} within 0.3 s\n"
