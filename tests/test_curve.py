"""CURVE on every socket, against real daemons: allowed keys get answers, any other key
(or none) gets nothing; workers and the master authenticate each other; an eavesdropper
sees no plain text; a daemon without keys refuses a non-loopback address unless
allow_insecure; authorized keys are read again on SIGHUP."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq.auth

import jobd
from jobd.client import ClientCurve, NoAnswer, call

from conftest import claimed, free_port, jobctl, wait_for, wait_idle
from tcp_proxy import TcpProxy

#: A target name that must never show on the wire in plain text when CURVE is on.
MARKER = "zq7marker9"


@dataclass
class Keys:
    dir: Path

    def pair(self, name: str) -> str:
        return str(self.dir / f"{name}.key_secret")

    def public(self, name: str) -> str:
        return str(self.dir / f"{name}.key")

    def client(self, name: str, server: str) -> ClientCurve:
        return ClientCurve.load(self.pair(name), self.public(server))

    def authorize(self, folder: str, *names: str) -> str:
        path = self.dir / folder
        path.mkdir(exist_ok=True)
        for name in names:
            (path / f"{name}.key").write_bytes(Path(self.public(name)).read_bytes())
        return str(path)

    def server_config(self, name: str, folder: str, **extra: str) -> dict[str, Any]:
        return {"secret_key_file": self.pair(name), "authorized_keys": folder, **extra}


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """Key pairs of a master, workers w0 and w1, an operator and an intruder; the master
    lets in w0 and the operator (not w1, not the intruder), the workers the operator."""
    k = Keys(tmp_path / "keys")
    k.dir.mkdir()
    for name in ("master", "w0", "w1", "ops", "intruder"):
        zmq.auth.create_certificates(k.dir, name)
    k.authorize("master-allows", "w0", "ops")
    k.authorize("workers-allow", "ops")
    return k


def curve_master(start_master, keys: Keys, **config: Any):
    master = start_master(
        wait=False, curve=keys.server_config("master", str(keys.dir / "master-allows")), **config
    )
    master.curve = keys.client("ops", "master")
    master.wait_ready()
    return master


def curve_worker(start_worker, keys: Keys, name: str, master: str | None = None, **config: Any):
    """A worker with CURVE keys; `master` is the address of its master, if any."""
    extra = {"server_key_file": keys.public("master")} if master is not None else {}
    curve = keys.server_config(name, str(keys.dir / "workers-allow"), **extra)
    worker = start_worker(name=name, curve=curve, master=master, wait=False, **config)
    worker.curve = keys.client("ops", name)
    worker.wait_ready()
    return worker


def test_only_clients_with_an_authorized_key_get_answers(start_master, keys: Keys):
    master = curve_master(start_master, keys)
    assert master.request("ping")["name"] == "jobd-master"  # ops, an authorized key

    for curve in (
        keys.client("intruder", "master"),  # a key the master does not know
        keys.client("w1", "master"),  # a real worker's key, but not authorized
        keys.client("ops", "w0"),  # an allowed key, but a wrong idea of the server key
        None,  # no CURVE at all
    ):
        with pytest.raises(NoAnswer):
            call(master.address, "ping", timeout=0.5, curve=curve)

    m = ["--timeout", 1, "--master", master.address]
    out = jobctl(*m, "--key", keys.pair("ops"), "--server-key", keys.public("master"), "ping")
    assert "jobd-master" in out.stdout
    denied = jobctl(
        *m, "--key", keys.pair("intruder"), "--server-key", keys.public("master"), "ping",
        status=3,
    )  # fmt: skip
    assert f"no answer from {master.address} within 1 s" in denied.stderr
    jobctl(*m, "ping", status=3)  # plain text to a CURVE master: no answer either
    usage = jobctl(*m, "--key", keys.pair("ops"), "ping", status=2)
    assert "CURVE needs both keys: --server-key" in usage.stderr
    usage = jobctl(*m, "--key", keys.public("ops"), "--server-key", keys.public("master"),
                   "ping", status=2)  # fmt: skip
    assert "no valid secret key in it" in usage.stderr

    # The keys may come from the defaults file, relative to it.
    defaults = keys.dir / "jobctl.yaml"
    settings = {"master": master.address, "key": "ops.key_secret"}
    defaults.write_text(yaml.safe_dump({**settings, "master_server_key": "master.key"}))
    assert "jobd-master" in jobctl("--config", defaults, "ping").stdout
    # The log itself is the behaviour here: at info level a daemon does not log a line
    # for every client it lets in (the ZAP handler logs at debug only).
    assert "ALLOWED (CURVE)" not in master.log()


def test_workers_and_master_authenticate_each_other(jobs, start_master, start_worker, keys):
    master = curve_master(start_master, keys)
    w0 = curve_worker(start_worker, keys, "w0", master.address, targets={"t": 1})
    wait_for(lambda: "w0" in master.request("status")["workers"], 5, "w0 registered")

    # Through the master over CURVE: a poke reaches w0, which runs the job.
    (job,) = jobs.insert("t")
    auth = ["--key", keys.pair("ops"), "--server-key", keys.public("master")]
    assert "poll sent" in jobctl("--master", master.address, *auth, "poke", "t").stdout
    assert jobs.wait_done([job])[0]["result"] == "ok"
    # The worker's own socket is a CURVE server too.
    assert w0.request("status")["name"] == "w0"
    with pytest.raises(NoAnswer):
        call(w0.address, "ping", timeout=0.5)

    # w1's key is not among the master's authorized keys: it never registers, and says why.
    # The log line is the behaviour (no reply of either side tells an operator why a
    # worker is missing); it also marks the moment w1 has dialled and been refused.
    w1 = curve_worker(start_worker, keys, "w1", master.address, targets={"t": 1})
    wait_for(lambda: "security handshake failed" in w1.log(), 5, "w1's refusal logged")
    assert list(master.request("status")["workers"]) == ["w0"]

    # A fake master (another key pair on the address w0 expects): w0 does not talk to it.
    assert "security handshake failed" not in w0.log()  # none with the real master
    master.stop()
    fake = start_master(
        wait=False, listen=master.address,
        curve=keys.server_config("intruder", keys.authorize("fake-allows", "w0", "ops")),
    )  # fmt: skip
    fake.curve = keys.client("ops", "intruder")
    fake.wait_ready()
    # w0 has redialled the address and refused the key it found there (it logs the first
    # failure of a run): only then is the fake's empty registry proof that w0 does not
    # talk to it.
    wait_for(lambda: "security handshake failed" in w0.log(), 5, "w0 refusing the fake")
    assert fake.request("status")["workers"] == {}


def relay_capture(jobs, start_master, start_worker, keys: Keys | None) -> bytes:
    """Everything on the wire while a worker registers target MARKER with a master, a
    client pokes MARKER (and the worker runs the job the poll brings), and asks for the
    master's status, all through a capturing proxy."""
    master = curve_master(start_master, keys) if keys else start_master()
    host, port = master.address.removeprefix("tcp://").split(":")
    proxy = TcpProxy((host, int(port)), capture=True)
    relayed = f"tcp://127.0.0.1:{proxy.port}"
    client = keys.client("ops", "master") if keys else None
    try:
        if keys:
            worker = curve_worker(start_worker, keys, "w0", relayed, targets={MARKER: 1})
        else:
            worker = start_worker({MARKER: 1}, name="w0", master=relayed)
        wait_for(
            lambda: "w0" in call(relayed, "status", timeout=5, curve=client)["workers"],
            5, "w0 registered through the proxy",
        )  # fmt: skip
        wait_idle(worker)
        (job,) = jobs.insert(MARKER)
        reply = call(relayed, "poke", {"targets": [MARKER]}, timeout=5, curve=client)
        assert reply["workers"] == ["w0"], reply
        # Only the poll, through the proxy, can bring the job to the worker (no safety
        # poll): the capture holds the poll and the job's events.
        jobs.wait_done([job])
        assert claimed(worker) == {"by_target": 1, "named": 0}
        status = call(relayed, "status", timeout=5, curve=client)
        assert MARKER in status["workers"]["w0"]["targets"]
        assert status["workers"]["w0"]["polls_sent"] == 1
        return bytes(proxy.captured)
    finally:
        proxy.close()


def test_traffic_is_encrypted(jobs, start_master, start_worker, keys: Keys):
    plain = relay_capture(jobs, start_master, start_worker, None)
    # Without CURVE the marker is readable on the wire: the capture does see the traffic.
    assert MARKER.encode() in plain and b"register-worker" in plain
    encrypted = relay_capture(jobs, start_master, start_worker, keys)
    assert len(encrypted) > 500, "the capture saw the CURVE traffic"
    for text in (MARKER, "register-worker", "poke", "status", "jobd-master"):
        assert text.encode() not in encrypted, text
    assert b"CURVE" in encrypted  # the ZMTP greeting names the mechanism, in clear


def test_a_non_loopback_address_needs_keys_or_allow_insecure(tmp_path: Path, keys: Keys):
    port = free_port()
    config = tmp_path / "master.yaml"
    config.write_text(yaml.safe_dump({"listen": f"tcp://0.0.0.0:{port}"}))
    done = subprocess.run(
        [sys.executable, "-m", "jobd_master", "--config", str(config)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{config}: listen: tcp://0.0.0.0:{port} can be reached from other hosts" in done.stderr
    assert "configure curve: (see docs/curve.md) or set allow_insecure: true" in done.stderr

    worker_config = tmp_path / "worker.yaml"
    worker_config.write_text(yaml.safe_dump({
        "listen": "tcp://*:7080", "database": "mysql://root@127.0.0.1/x",
        "launcher": {"command": "true"}, "targets": {"t": 1},
    }))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "jobd", "--check", "--config", str(worker_config)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 2 and "listen: tcp://*:7080 can be reached" in done.stderr

    # allow_insecure: true, or CURVE keys, and the same address is served.
    for extra, curve in (
        ({"allow_insecure": True}, None),
        ({"curve": keys.server_config("master", str(keys.dir / "master-allows"))},
         keys.client("ops", "master")),
    ):  # fmt: skip
        # Its own events port: the default 7082 may be taken by another master.
        events = f"tcp://127.0.0.1:{free_port()}"
        config.write_text(
            yaml.safe_dump({"listen": f"tcp://0.0.0.0:{port}", "events": events, **extra})
        )
        with subprocess.Popen(
            [sys.executable, "-m", "jobd_master", "--config", str(config)],
            stderr=subprocess.PIPE,
        ) as master:
            try:
                wait_for(lambda c=curve: _answers(f"tcp://127.0.0.1:{port}", c), 10, "ping")
            finally:
                master.send_signal(signal.SIGTERM)
                assert master.wait(10) == 0


def _answers(address: str, curve: ClientCurve | None) -> bool:
    try:
        return call(address, "ping", timeout=0.5, curve=curve)["name"] == "jobd-master"
    except NoAnswer:
        return False


@pytest.mark.parametrize(
    ("curve", "message"),
    [
        ({"authorized_keys": "."}, "curve.secret_key_file: required with authorized_keys"),
        ({"secret_key_file": "master.key_secret"}, "curve.authorized_keys: required with"),
        ({"secret_key_file": "master.key", "authorized_keys": "master-allows"},
         "master.key: no valid secret key in it (give the .key_secret file, not the .key)"),
        ({"secret_key_file": "nope.key_secret", "authorized_keys": "master-allows"},
         "nope.key_secret: cannot read the key file"),
        ({"secret_key_file": "master.key_secret", "authorized_keys": "nope"},
         "nope: not a directory of public .key files"),
        ({"secret_key_file": "master.key_secret", "authorized_keys": "master-allows",
          "server_key_file": "master.key"}, "curve.server_key_file: unknown key"),
        ({"secret_key_file": "mixed.key_secret", "authorized_keys": "master-allows"},
         "mixed.key_secret: its public key does not belong to its secret key"),
    ],
)  # fmt: skip
def test_bad_curve_config_exits_2(keys: Keys, curve: dict[str, str], message: str):
    # A pair file whose public line is another key's.
    theirs = zmq.auth.load_certificate(keys.pair("master"))[0].decode()
    ours = zmq.auth.load_certificate(keys.pair("w0"))[0].decode()
    mixed = Path(keys.pair("w0")).read_text().replace(ours, theirs)
    (keys.dir / "mixed.key_secret").write_text(mixed)
    config = keys.dir / "master.yaml"  # key paths are relative to the config file
    config.write_text(yaml.safe_dump({"listen": f"tcp://127.0.0.1:{free_port()}", "curve": curve}))
    for args in (["--check"], []):
        done = subprocess.run(
            [sys.executable, "-m", "jobd_master", *args, "--config", str(config)],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert done.stderr.startswith(f"jobd-master: {config}: ")


def test_worker_with_a_master_needs_its_public_key(keys: Keys, jobs):
    config = keys.dir / "worker.yaml"
    config.write_text(yaml.safe_dump({
        "master": "tcp://127.0.0.1:7081", "database": jobs.db.url_string, "table": jobs.table,
        "launcher": {"command": "true"}, "targets": {"t": 1},
        "curve": keys.server_config("w0", "workers-allow"),
    }))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "jobd", "--check", "--config", str(config)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 2
    assert "curve.server_key_file: required with master: (the master's public key)" in done.stderr


@pytest.mark.parametrize("kind", ["master", "worker"])
def test_sighup_reads_the_authorized_keys_again(kind, jobs, start_master, start_worker, keys):
    if kind == "master":
        daemon, folder = curve_master(start_master, keys), "master-allows"
    else:
        daemon, folder = curve_worker(start_worker, keys, "w0"), "workers-allow"
    server = "master" if kind == "master" else "w0"
    intruder = keys.client("intruder", server)
    ops = keys.client("ops", server)
    assert call(daemon.address, "status", timeout=5, curve=ops)["reloads"]["applied"] == 0
    with pytest.raises(NoAnswer):
        call(daemon.address, "ping", timeout=0.5, curve=intruder)
    # Rotation: the new key is added and the old one removed, then SIGHUP.
    keys.authorize(folder, "intruder")
    (keys.dir / folder / "ops.key").unlink()
    daemon.signal(signal.SIGHUP)
    reloads = wait_for(lambda: _reloads(daemon.address, intruder), 5, "the intruder let in")
    assert reloads == {"applied": 1, "refused": 0, "error": None}
    assert call(daemon.address, "ping", timeout=5, curve=intruder)["version"] == jobd.__version__
    with pytest.raises(NoAnswer):
        call(daemon.address, "ping", timeout=0.5, curve=ops)
    # The line docs/curve.md gives operators to confirm each step of a rotation: no reply
    # reports the key counts, so the log line itself is what is checked.
    assert "(1 new, 1 removed)" in daemon.log()
    # A directory that cannot be read keeps the keys in force.
    (keys.dir / folder).rename(keys.dir / "gone")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: _reloads(daemon.address, intruder)["applied"] == 2, 5, "second reload")
    assert call(daemon.address, "ping", timeout=5, curve=intruder)["version"] == jobd.__version__
    with pytest.raises(NoAnswer):
        call(daemon.address, "ping", timeout=0.5, curve=ops)
    # The ERROR line docs/curve.md promises for it (no reply says the keys were kept
    # rather than re-read unchanged).
    assert "keeping the authorized keys in force" in daemon.log()


def _reloads(address: str, curve: ClientCurve) -> dict[str, Any] | None:
    """The daemon's reload counts, asked with `curve`; None while it does not answer."""
    try:
        return call(address, "status", timeout=0.5, curve=curve)["reloads"]
    except NoAnswer:
        return None


def test_keygen_writes_a_key_pair_with_a_private_secret_and_never_overwrites(tmp_path: Path):
    out = jobctl("keygen", tmp_path / "k", "web-1").stdout
    public, secret = tmp_path / "k" / "web-1.key", tmp_path / "k" / "web-1.key_secret"
    pair = ClientCurve.load(str(secret), str(public))
    assert pair.keys.public == pair.server_public and pair.keys.public.decode() in out
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert pair.keys.secret.decode() not in out  # the secret is never printed
    again = jobctl("keygen", tmp_path / "k", "web-1", status=1)
    assert "exists; not overwriting a key" in again.stderr


def uncommented_curve(example: Path, keys: Keys) -> str:
    """An example config with its commented `curve:` section switched on, its key paths
    pointing at real keys."""
    text = example.read_text()
    section = re.search(r"^# curve:\n((?:#   .*\n)+)", text, flags=re.M)
    assert section, f"{example} has no commented curve: section"
    body = re.sub(r"^#   ", "  ", section.group(1), flags=re.M)
    text = text.replace(section.group(0), "curve:\n" + body)
    text = re.sub(r"/etc/jobd/curve/[\w.-]+\.key_secret", keys.pair("w0"), text)
    text = re.sub(r"/etc/jobd/curve/[\w.-]+\.key\b", keys.public("master"), text)
    return re.sub(r"/etc/jobd/curve/(clients|authorized)", str(keys.dir / "workers-allow"), text)


def test_the_example_configs_curve_sections_are_valid(keys: Keys, jobs, tmp_path: Path):
    examples = Path(__file__).resolve().parent.parent / "config"
    master = tmp_path / "jobd-master.yaml"
    master.write_text(uncommented_curve(examples / "jobd-master.yaml", keys))
    worker = tmp_path / "jobd.yaml"
    config = yaml.safe_load(uncommented_curve(examples / "jobd.yaml", keys))
    worker.write_text(
        yaml.safe_dump({**config, "database": jobs.db.url_string, "table": jobs.table})
    )
    for program, path in (("jobd_master", master), ("jobd", worker)):
        done = subprocess.run(
            [sys.executable, "-m", program, "--check", "--config", str(path)],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert yaml.safe_load(path.read_text())["curve"]["secret_key_file"] == keys.pair("w0")
