"""Secrets never show: a worker and a master at debug level, with CURVE keys and a
database password, are taken through failures (a wrong password, the database cut,
bad requests, a client with a key they do not know, failing reloads, jobctl errors),
and nothing they write, reply or store holds the password or a secret key."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
import yaml
import zmq
import zmq.auth
from click.testing import CliRunner
from zmq.utils import z85

from jobctl.cli import main as jobctl_main
from jobd.client import ClientCurve, NoAnswer, RequestError, call
from jobd.wire.curve import make_client

from conftest import Database, wait_for
from tcp_proxy import TcpProxy

#: Characters that need percent-encoding in a URL, so both spellings are looked for.
PASSWORD = f"Pw-{secrets.token_hex(8)}!@:/%"
WRONG = f"Wrong-{secrets.token_hex(8)}"


@pytest.fixture
def db_user(database: Database):
    """A database user of its own with a password, allowed on the test database."""
    user = f"jobd_s_{secrets.token_hex(3)}"
    admin = database.connect()
    hosts = ("%", "localhost", "127.0.0.1")
    with admin.cursor() as cur:
        for host in hosts:
            escaped = host.replace("%", "%%")  # pymysql formats the statement with %
            cur.execute(f"CREATE USER '{user}'@'{escaped}' IDENTIFIED BY %s", (PASSWORD,))
            cur.execute(f"GRANT ALL ON `{database.url.database}`.* TO '{user}'@'{host}'")
    try:
        yield user
    finally:
        with admin.cursor() as cur:
            for host in hosts:
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        admin.close()


def url(user: str, password: str, port: int, database: str) -> str:
    return f"mysql://{user}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def forbidden(keys: Path) -> dict[str, bytes]:
    """Every spelling of every secret: the passwords as typed and percent-encoded, each
    secret key in Z85 (as in the files) and raw."""
    found = {
        "password": PASSWORD.encode(),
        "password (URL)": quote(PASSWORD, safe="").encode(),
        "wrong password": WRONG.encode(),
    }
    for file in keys.glob("*.key_secret"):
        secret = zmq.auth.load_certificate(file)[1]
        assert secret is not None and len(secret) == 40
        found[f"{file.name} (Z85)"] = secret
        found[f"{file.name} (raw)"] = z85.decode(secret)
    return found


def jobctl(*args: Any) -> str:
    result = CliRunner().invoke(jobctl_main, [str(a) for a in args])
    return result.stdout + result.stderr


def bad_requests(address: str, curve: ClientCurve) -> int:
    """Malformed and hostile requests over an authorized CURVE connection; returns how
    many were answered (each with an error)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    make_client(sock, curve)
    sock.connect(address)
    frames = [
        b"\xc1",
        msgpack.packb({"no": 1, "type": "poll", "data": {"targets": ["'; DROP TABLE jobs"]}}),
        msgpack.packb({"no": 2, "type": "shutdown"}),
        msgpack.packb({"no": 3, "type": "send-signal", "data": {"jobs": {1: [[[[[1]]]]]}}}),
        msgpack.packb({"no": 4, "type": "status", "data": {"password": PASSWORD}}),
    ]
    answered = 0
    try:
        for frame in frames:
            sock.send(frame)
            if sock.poll(5000):
                reply = msgpack.unpackb(sock.recv(), strict_map_key=False)
                answered += "error" in reply
    finally:
        ctx.destroy(linger=0)
    return answered


@pytest.mark.timeout(120)
def test_no_secret_in_logs_replies_or_rows(
    jobs, start_master, start_worker, db_user, tmp_path, monkeypatch
):
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("master", "w0", "ops", "intruder"):
        zmq.auth.create_certificates(keys, name)
    allowed = keys / "allowed"
    allowed.mkdir()
    for name in ("w0", "ops"):
        (allowed / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    ops_master = ClientCurve.load(str(keys / "ops.key_secret"), str(keys / "master.key"))
    ops_worker = ClientCurve.load(str(keys / "ops.key_secret"), str(keys / "w0.key"))
    db = jobs.db.url
    proxy = TcpProxy((db.host, db.port))
    good = url(db_user, PASSWORD, proxy.port, db.database)
    outputs: list[str] = []
    debug = {"level": "debug"}

    # The master, with the password in JOBD_DATABASE_URL (its scheduler uses it).
    monkeypatch.setenv("JOBD_DATABASE_URL", good)
    master_curve = {"secret_key_file": str(keys / "master.key_secret"),
                    "authorized_keys": str(allowed)}  # fmt: skip
    master = start_master(wait=False, curve=master_curve, table=jobs.table, log=debug)
    master.curve = ops_master
    master.wait_ready()

    # A worker with a wrong password: it keeps retrying, saying why. It answers nothing
    # until it has a database, so its log is all there is to see (and to check for the
    # password).
    monkeypatch.setenv("JOBD_DATABASE_URL", url(db_user, WRONG, proxy.port, db.database))
    denied = start_worker({"t": 1}, name="wbad", wait=False, log=debug)
    wait_for(lambda: "Access denied" in denied.log(), 10, "the wrong password refused")
    check = subprocess.run(
        [sys.executable, "-m", "jobd", "--check", "--config", str(denied.config_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 2 and "Access denied" in check.stderr
    outputs.append(check.stderr + check.stdout)
    denied.stop()

    # The worker, through the proxy, with CURVE towards clients and the master.
    monkeypatch.setenv("JOBD_DATABASE_URL", good)
    worker_curve = {
        "secret_key_file": str(keys / "w0.key_secret"), "authorized_keys": str(allowed),
        "server_key_file": str(keys / "master.key"),
    }  # fmt: skip
    worker = start_worker(
        {"t": 2}, name="w0", wait=False, curve=worker_curve, master=master.address,
        command="sh -c 'env; sleep 0.3'", log=debug,
    )  # fmt: skip
    worker.curve = ops_worker
    worker.wait_ready()
    wait_for(lambda: "w0" in master.request("status")["workers"], 5, "w0 registered")

    # Jobs, with the database cut while they run: until their outcomes fail to be
    # written and wait in memory (the failures are logged, URL and all).
    ids = jobs.insert("t", 6)
    auth = ["--key", keys / "ops.key_secret", "--server-key", keys / "master.key"]
    outputs.append(jobctl("--master", master.address, *auth, "poke", "t"))
    ran = wait_for(lambda: worker.request("status")["running"], 5, "jobs running")
    proxy.cut()
    # The jobs end (0.3 s) and nothing else can start; their rows still say running:
    # their outcomes failed to be written and wait in memory.
    wait_for(lambda: not worker.request("status")["running"], 5, "the jobs ended")
    assert jobs.count(f"status = 'running' AND id IN ({', '.join(map(str, ran))})") == len(ran)
    proxy.restore()
    rows = jobs.wait_done(ids, timeout=30)
    assert all(row["result"] == "ok" for row in rows)

    # Bad requests, and a client whose key nobody knows.
    assert bad_requests(worker.address, ops_worker) == 5
    assert bad_requests(master.address, ops_master) == 5
    intruder = ClientCurve.load(str(keys / "intruder.key_secret"), str(keys / "master.key"))
    with pytest.raises(NoAnswer):
        call(master.address, "ping", timeout=0.5, curve=intruder)
    with pytest.raises(RequestError):
        worker.request("poll", {"targets": [PASSWORD[:16]]})

    # Failing reloads.
    config = yaml.safe_load(worker.config_path.read_text())
    worker.config_path.write_text(yaml.safe_dump({**config, "targets": {"t": 0}}))
    worker.signal(signal.SIGHUP)
    master.config_path.write_text("listen: [\n")
    master.signal(signal.SIGHUP)
    wait_for(lambda: worker.request("status")["reloads"]["refused"] == 1, 5, "worker refusal")
    wait_for(lambda: master.request("status")["reloads"]["refused"] == 1, 5, "master refusal")

    # jobctl's database errors: a wrong password, the right one on a missing table.
    wrong = url(db_user, WRONG, db.port, db.database)
    outputs.append(jobctl("--database", wrong, "recover", "gone", "--force"))
    outputs.append(jobctl("--database", good, "--table", "nope", "recover", "gone", "--force"))
    assert "Access denied" in outputs[-2] and "does not exist" in outputs[-1]
    assert "mysql://" in outputs[-1] and "***" in outputs[-1]  # the URL, redacted

    # Status replies, the master's with each worker's own.
    replies = [
        worker.request("status"),
        master.request("status", {"poll_workers": True}),
        master.request("ping"),
    ]
    assert replies[1]["workers"]["w0"]["status"]["name"] == "w0"
    proxy.close()
    for daemon in (worker, master):
        daemon.stop()

    logs = {d.log_path.name: d.log_path.read_bytes() for d in (master, denied, worker)}
    # The logs are what is checked: both were written at debug level, the most they say.
    assert b" DEBUG " in logs[worker.log_path.name] and b" DEBUG " in logs[master.log_path.name]
    texts = {
        **logs,
        "jobctl and --check": "\n".join(outputs).encode(),
        "status replies": repr(replies).encode() + msgpack.packb(replies),
        # The jobs printed their environment: the launcher removes the URL from it.
        "job output": repr([(r["stdout"], r["stderr"]) for r in rows]).encode(),
    }
    assert b"JOBD_WORKER=w0" in texts["job output"]
    leaks = [
        f"{what} in {where}"
        for what, secret in forbidden(keys).items()
        for where, text in texts.items()
        if secret in text
    ]
    assert not leaks, leaks
