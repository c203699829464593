"""The systemd units pass `systemd-analyze verify`, and both daemons speak sd_notify:
READY=1 once they serve, watchdog pings when WATCHDOG_USEC is set, STOPPING=1 on stop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobd
from jobd.client import call

from conftest import ROOT

UNITS = ["jobd.service", "jobd-master.service"]
#: Where the units expect the installation (docs/master.md, "systemd units").
INSTALL_BIN = "/opt/jobd/bin/"


def systemd_analyze() -> str:
    # Not skipped when missing: scripts/test.sh installs Debian's `systemd` package.
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert os.access(path, os.X_OK), "systemd-analyze is missing: apt-get install systemd"
    return path


def test_units_pass_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart's program exists: point it at this installation.
    bin_dir = Path(sys.executable).parent
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        assert INSTALL_BIN in text
        (tmp_path / unit).write_text(text.replace(INSTALL_BIN, f"{bin_dir}/"))
    assert (bin_dir / "jobd").exists() and (bin_dir / "jobd-master").exists()
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *(str(tmp_path / u) for u in UNITS)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Unknown keys and bad values are only warnings: any output fails the test too.
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


def test_units_have_what_production_needs():
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        for line in [
            "Type=notify", "Restart=on-failure", "User=jobd", "NoNewPrivileges=yes",
            "ProtectSystem=strict", "PrivateTmp=yes", "ExecReload=/bin/kill -HUP $MAINPID",
            "KillMode=mixed", "WatchdogSec=",
        ]:  # fmt: skip
            assert line in text, (unit, line)
    # The worker's stop timeout covers its graceful shutdown: shutdown_timeout (30 s) +
    # kill_grace (10 s) + writing the outcomes (10 s).
    assert "TimeoutStopSec=60" in (ROOT / "systemd" / "jobd.service").read_text()


@pytest.fixture
def notify_socket(monkeypatch) -> Iterator[socket.socket]:
    """A fake systemd notification socket; the daemons started afterwards inherit it."""
    directory = tempfile.mkdtemp(prefix="jobd-notify-")  # short: AF_UNIX paths are limited
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def receive(sock: socket.socket, wanted: str, timeout: float = 15.0) -> list[str]:
    """Messages up to and including `wanted`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            raise AssertionError(f"no {wanted} within {timeout} s; got {seen}") from None
    return seen


def check_notifications(sock: socket.socket, daemon) -> None:  # type: ignore[no-untyped-def]
    first = receive(sock, "READY=1")
    assert first == ["READY=1"], first  # READY comes first...
    # ...and only once the daemon serves: it answers at once.
    assert call(daemon.address, "ping", timeout=1.0)["version"] == jobd.__version__
    receive(sock, "WATCHDOG=1", timeout=2.0)
    receive(sock, "WATCHDOG=1", timeout=2.0)
    assert daemon.stop() == 0
    receive(sock, "STOPPING=1", timeout=2.0)


def test_master_sends_ready_and_watchdog_pings(notify_socket, start_master):
    master = start_master(wait=False)
    check_notifications(notify_socket, master)


def test_worker_sends_ready_and_watchdog_pings(notify_socket, start_worker):
    worker = start_worker({"t": 1}, wait=False)
    check_notifications(notify_socket, worker)
