"""Small steps of scripts/test.sh and scripts/quickstart.sh that are easier in Python.

    helper.py probe URL            print ok, denied or down for mysql://user:pass@host:port/
    helper.py exec URL             run the SQL statements on stdin
    helper.py quickstart-sql       print the SQL creating database and user jobd
    helper.py worker-url           print the worker's database URL
    helper.py derive-config SRC DEST [LISTEN [MASTER]]
                                   write the quickstart worker config derived from SRC
    helper.py derive-master-config SRC DEST HTTP [LISTEN]
                                   write the quickstart master config derived from SRC
    helper.py listen CONFIG        print the `listen` endpoint of a worker config
    helper.py sample-job URL ADDRESS TARGET
                                   insert the seed's sample job, poll, wait, print the row

Passwords come from the environment (JOBD_DB_PASSWORD), never from the command line.
Runs with the venv's python (pymysql and PyYAML come with jobd).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pymysql
import yaml
from pymysql.constants import CLIENT

#: Error numbers of a server that answers but refuses the login.
ACCESS_ERRORS = {1044, 1045, 1130, 1698}
QUICKSTART_DATABASE = "jobd"
QUICKSTART_USER = "jobd"
QUICKSTART_HOSTS = ("127.0.0.1", "localhost")


def connect(url: str, with_database: bool = True, **kw: object) -> pymysql.connections.Connection:
    """A connection for mysql://user:password@host:port/[database]."""
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/")) if with_database else ""
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database or None,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=3,
        **kw,
    )


def probe(url: str) -> int:
    try:
        connect(url, with_database=False).close()
        print("ok")
    except pymysql.err.MySQLError as exc:
        print("denied" if exc.args and exc.args[0] in ACCESS_ERRORS else "down")
    return 0


def execute(url: str) -> int:
    sql = sys.stdin.read()
    conn = connect(url, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            while cur.nextset():
                pass
    finally:
        conn.close()
    return 0


def password() -> str:
    value = os.environ.get("JOBD_DB_PASSWORD", "")
    if not value:
        sys.exit("helper.py: JOBD_DB_PASSWORD is not set")
    return value


def quickstart_sql() -> int:
    literal = pymysql.converters.escape_string(password())
    db, user = QUICKSTART_DATABASE, QUICKSTART_USER
    print(f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4;")
    for host in QUICKSTART_HOSTS:
        account = f"'{user}'@'{host}'"
        print(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{literal}';")
        print(f"ALTER USER {account} IDENTIFIED BY '{literal}';")
        print(f"GRANT ALL PRIVILEGES ON `{db}`.* TO {account};")
    return 0


def worker_url() -> int:
    secret = quote(password(), safe="")
    print(f"mysql://{QUICKSTART_USER}:{secret}@127.0.0.1:3306/{QUICKSTART_DATABASE}")
    return 0


def derive_config(source: str, dest: str, listen: str = "", master: str = "") -> int:
    """The example worker config minus `database:` (JOBD_DATABASE_URL gives it), with the
    quickstart's master."""
    config = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    config.pop("database", None)
    config.pop("master", None)
    if listen:
        config["listen"] = listen
    if master:
        config["master"] = master
    header = (
        f"# Written by scripts/quickstart.sh from {source}; see there for what each key means.\n"
        "# `database` comes from JOBD_DATABASE_URL.\n"
    )
    Path(dest).write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return 0


def derive_master_config(source: str, dest: str, http: str, listen: str = "") -> int:
    """The example master config minus `database:` (JOBD_DATABASE_URL gives it), with the
    dashboard at `http` (127.0.0.1: no logins asked)."""
    config = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    config.pop("database", None)
    config["http"] = http
    if listen:
        config["listen"] = listen
    header = (
        f"# Written by scripts/quickstart.sh from {source}; see there for what each key means.\n"
        "# `database` comes from JOBD_DATABASE_URL.\n"
    )
    Path(dest).write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return 0


def listen_of(path: str) -> int:
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    print(config.get("listen") or "tcp://127.0.0.1:7080")
    return 0


def sample_job(url: str, address: str, target: str, timeout: float = 30.0) -> int:
    from jobd.client import call

    conn = connect(url)
    with conn.cursor() as cur:
        # The seed's plain INSERT: every other column has a default.
        cur.execute(
            "INSERT INTO jobs (target, time_created) VALUES (%s, UNIX_TIMESTAMP())", (target,)
        )
        job_id = cur.lastrowid
    print(f"    inserted job {job_id} (target {target!r})")
    reply = call(address, "poll", {"targets": [target]})
    print(f"    sent poll to {address}: {reply}")
    deadline = time.monotonic() + timeout
    columns = "id, target, slot, status, result, return_code, sig, stdout, stderr, worker"
    while True:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(f"SELECT {columns} FROM jobs WHERE id = %s", (job_id,))
            row = cur.fetchone()
        if row["status"] in ("done", "ignored") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    conn.close()
    print(f"    row {job_id} of table jobs:")
    for key, value in row.items():
        print(f"      {key:<12} {value!r}")
    if row["status"] != "done" or row["result"] != "ok":
        print(f"error: job {job_id} did not finish ok within {timeout:g} s", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    commands = {
        "probe": probe,
        "exec": execute,
        "quickstart-sql": quickstart_sql,
        "worker-url": worker_url,
        "derive-config": derive_config,
        "derive-master-config": derive_master_config,
        "listen": listen_of,
        "sample-job": sample_job,
    }
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
