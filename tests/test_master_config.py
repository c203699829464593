"""jobd-master's command line: config errors exit 2 naming file and key, --check,
--version, a busy address, and SIGHUP reloading the config."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobd import __version__

from conftest import free_port, wait_for


def master_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobd_master", *args], capture_output=True, text=True, timeout=20
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"listen": "tcp://127.0.0.1:7081", "colour": "blue"}, "colour: unknown key"),
        ({"ping_interval": "fast"}, "ping_interval: expected a number, got str"),
        ({"ping_interval": 0}, "ping_interval: must be >= 0.05"),
        ({"listen": "127.0.0.1:7081"}, "listen: expected a ZeroMQ endpoint"),
        ({"log": {"level": "loud"}}, "log.level: expected one of"),
        ({"log": {"lvl": "info"}}, "log.lvl: unknown key"),
        ([1, 2], "top level: expected a map"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path, config, message):
    path = tmp_path / "master.yaml"
    path.write_text(yaml.safe_dump(config))
    for args in (["--config", str(path)], ["--check", "--config", str(path)]):
        done = master_cli(*args)
        assert done.returncode == 2, done
        assert done.stderr.startswith(f"jobd-master: {path}: ") and message in done.stderr


def test_check_version_and_missing_file(tmp_path: Path):
    path = tmp_path / "master.yaml"
    path.write_text("listen: tcp://127.0.0.1:7999\nping_interval: 2\n")
    done = master_cli("--check", "--config", str(path))
    assert done.returncode == 0 and "OK (listen tcp://127.0.0.1:7999)" in done.stdout
    done = master_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"jobd-master, version {__version__}"
    done = master_cli("--config", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "nope.yaml: cannot read" in done.stderr
    # The repository's example config is valid.
    example = Path(__file__).resolve().parent.parent / "config" / "jobd-master.yaml"
    assert master_cli("--check", "--config", str(example)).returncode == 0


def test_busy_address_exits_2(start_master, tmp_path: Path):
    master = start_master()
    path = tmp_path / "second.yaml"
    path.write_text(f"listen: {master.address}\n")
    done = master_cli("--config", str(path))
    assert done.returncode == 2 and f"cannot listen on {master.address}" in done.stderr


def test_sighup_applies_a_valid_config_and_refuses_one_that_needs_a_restart(start_master):
    master = start_master(ping_interval=0.3)
    config = yaml.safe_load(master.config_path.read_text())
    master.config_path.write_text(yaml.safe_dump({**config, "ping_interval": 0.7}))
    master.signal(signal.SIGHUP)
    wait_for(lambda: master.request("status")["ping_interval"] == 0.7, 5, "new interval")
    assert master.request("status")["reloads"] == {"applied": 1, "refused": 0, "error": None}

    # A new listen address needs a restart: the whole reload is refused, as a worker's is.
    moved = {**config, "ping_interval": 0.9, "listen": f"tcp://127.0.0.1:{free_port()}"}
    master.config_path.write_text(yaml.safe_dump(moved))
    master.signal(signal.SIGHUP)
    wait_for(lambda: master.request("status")["reloads"]["refused"] == 1, 5, "the refusal")
    status = master.request("status")
    assert status["reloads"]["error"] == "listen cannot change on reload; restart jobd-master"
    assert status["ping_interval"] == 0.7 and status["listen"] == master.address

    master.config_path.write_text("ping_interval: soon\n")
    master.signal(signal.SIGHUP)
    wait_for(lambda: master.request("status")["reloads"]["refused"] == 2, 5, "the refusal")
    status = master.request("status")
    assert "ping_interval: expected a number" in status["reloads"]["error"]
    assert status["ping_interval"] == 0.7
