"""`jobd` configuration: bad configs exit 2 naming file and key; --check; --version."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from jobd import __version__

from conftest import free_port

JOBD = [sys.executable, "-m", "jobd"]


def run_jobd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JOBD, *args], capture_output=True, text=True, timeout=30, env=env)


def good_config(jobs) -> dict:
    return {
        "name": "cfg",
        "listen": f"tcp://127.0.0.1:{free_port()}",
        "database": jobs.db.url_string,
        "table": jobs.table,
        "launcher": {"command": "/bin/true"},
        "targets": {"mail": 20, "video": {"low": 2, "high": 4}},
        "log": {"level": "info"},
    }


def write(tmp_path, config) -> str:
    path = tmp_path / "jobd.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return str(path)


def test_check_accepts_a_good_config_and_database(jobs, tmp_path):
    path = write(tmp_path, good_config(jobs))
    result = run_jobd("--check", "--config", path)
    assert result.returncode == 0, result.stderr
    database = jobs.db.url
    assert result.stdout == (
        f"jobd: {path}: OK (database mysql://{database.user}@{database.host}:{database.port}"
        f"/{database.database})\n"
    )


def test_version_prints_the_program_and_its_version():
    result = run_jobd("--version")
    assert result.returncode == 0
    assert result.stdout == f"jobd, version {__version__}\n"


def mutate(config: dict, change: str) -> dict:
    """Apply 'a.b=value' (YAML value) or 'a.b!' (delete) to a copy of config."""
    config = yaml.safe_load(yaml.safe_dump(config))
    key, _, value = change.partition("=")
    delete = key.endswith("!")
    path = key.rstrip("!").split(".")
    node = config
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = yaml.safe_load(value)
    return config


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        ("launcher!", "launcher", "required key is missing"),
        ("launcher.command!", "launcher.command", "required key is missing"),
        ("targets!", "targets", "required key is missing"),
        ("colour=blue", "colour", "unknown key"),
        ("launcher.shell=yes", "launcher.shell", "unknown key"),
        ("fetch_limit=lots", "fetch_limit", "expected an integer"),
        ("fetch_limit=0", "fetch_limit", "must be between"),
        ("poll_interval=-1", "poll_interval", "must be >="),
        ("targets.mail=0", "targets.mail", "concurrency must be at least 1"),
        ("targets.video.low=0", "targets.video.low", "concurrency must be at least 1"),
        ("targets.video.low=two", "targets.video.low", "concurrency must be an integer"),
        ("targets.video={}", "targets.video", "expected at least one slot"),
        ("database=postgres://u@h/db", "database", "scheme must be"),
        ("database=mysql://u@h", "database", "names no database"),
        ("database=mysql://u@h:notaport/db", "database", "malformed URL"),
        ("listen=localhost:7080", "listen", "expected a ZeroMQ endpoint"),
        ("table=jobs; DROP TABLE x", "table", "expected a table name"),
        ("log.level=chatty", "log.level", "expected one of"),
        ("max_output_buffer=99999999999", "max_output_buffer", "must be between"),
        ("launcher.env=[1, 2]", "launcher.env", "expected a map"),
        ("name=bad name", "name", "expected a name"),
        ("targets.mail={concurrency: 2, slots: {a: 1}}", "targets.mail", "either concurrency"),
        ("targets.mail={concurrency: 2, timeout: -1}", "targets.mail.timeout", "must be >="),
        ("targets.mail={concurrency: 2, max_attempts: 0}", "targets.mail.max_attempts", "between"),
        ("targets.mail={concurrency: 2, colour: red}", "targets.mail.colour", "unknown key"),
        ("targets.mail={slots: {a: 0}}", "targets.mail.slots.a", "at least 1"),
        ("kill_grace=soon", "kill_grace", "expected a number"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(jobs, tmp_path, change, key, problem):
    path = write(tmp_path, mutate(good_config(jobs), change))
    for args in (["--config", path], ["--check", "--config", path]):
        result = run_jobd(*args)
        assert result.returncode == 2, result.stderr
        assert f"{path}: {key}: " in result.stderr
        assert problem in result.stderr


def test_unreadable_and_malformed_files_exit_2_saying_why(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    result = run_jobd("--config", missing)
    assert result.returncode == 2 and f"{missing}: cannot read" in result.stderr
    path = write(tmp_path, "targets: [unclosed\n")
    result = run_jobd("--config", path)
    assert result.returncode == 2 and f"{path}: line" in result.stderr and "YAML" in result.stderr
    path = write(tmp_path, "- a list\n")
    result = run_jobd("--config", path)
    assert result.returncode == 2 and "expected a map" in result.stderr


def test_check_fails_when_the_table_is_missing_or_incomplete(jobs, tmp_path):
    config = good_config(jobs)
    config["table"] = "no_such_table"
    result = run_jobd("--check", "--config", write(tmp_path, config))
    assert result.returncode == 2
    assert "table no_such_table does not exist" in result.stderr

    jobs.execute(f"CREATE TABLE `{jobs.table}_old` (id int primary key, target char(16))")
    config["table"] = f"{jobs.table}_old"
    result = run_jobd("--check", "--config", write(tmp_path, config))
    assert result.returncode == 2
    assert "lacks columns: slot, time_created" in result.stderr
    jobs.execute(f"DROP TABLE `{jobs.table}_old`")


def test_password_never_appears_in_errors(jobs, tmp_path):
    secret = "Sup3r-Secret-pw"
    config = good_config(jobs)
    config["database"] = f"mysql://jobd:{secret}@127.0.0.1:{free_port()}/nowhere"
    result = run_jobd("--check", "--config", write(tmp_path, config))
    assert result.returncode == 2
    assert "cannot connect to mysql://jobd:***@127.0.0.1" in result.stderr
    assert secret not in result.stderr + result.stdout

    # A wrong password against the real server, given through the environment.
    config["database"] = "mysql://ignored@h/db"
    env = {"JOBD_DATABASE_URL": f"mysql://root:{secret}@127.0.0.1:3306/{jobs.db.url.database}"}
    result = run_jobd("--check", "--config", write(tmp_path, config), env={**_env(), **env})
    assert result.returncode == 2
    assert secret not in result.stderr + result.stdout
    assert f"cannot connect to mysql://root:***@127.0.0.1:3306/{jobs.db.url.database}" in (
        result.stderr
    )
    assert "Access denied for user 'root'" in result.stderr


def test_environment_url_overrides_the_file(jobs, tmp_path):
    config = good_config(jobs)
    config["database"] = "mysql://nobody@127.0.0.1:1/nowhere"
    env = {**_env(), "JOBD_DATABASE_URL": jobs.db.url_string}
    result = run_jobd("--check", "--config", write(tmp_path, config), env=env)
    assert result.returncode == 0, result.stderr


def _env() -> dict:
    import os

    return dict(os.environ)
