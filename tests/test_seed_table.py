"""A table made for the jobd seed (3-byte utf8, the seed's twelve columns) is upgraded
in place by schema.sql, and works."""

from __future__ import annotations

import secrets
import subprocess
import sys

import yaml

from conftest import ROOT, free_port, wait_for

# The seed's table, as its README gives it.
SEED_TABLE = """CREATE TABLE `{name}` (
  `id` int(10) UNSIGNED NOT NULL AUTO_INCREMENT,
  `target` char(16) NOT NULL,
  `slot` char(16) DEFAULT NULL,
  `time_created` int(10) UNSIGNED NOT NULL,
  `time_started` int(10) UNSIGNED NOT NULL DEFAULT 0,
  `time_finished` int(10) UNSIGNED NOT NULL DEFAULT 0,
  `status` enum('waiting','manual','accepted','running','done','ignored')
    NOT NULL DEFAULT 'waiting',
  `result` enum('ok','fail') DEFAULT NULL,
  `return_code` tinyint(3) UNSIGNED DEFAULT NULL,
  `sig` char(10) DEFAULT NULL,
  `stdout` mediumtext DEFAULT NULL,
  `stderr` mediumtext DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `status_target_idx` (`status`, `target`, `id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8"""


def test_seed_table_is_upgraded_in_place_and_runs_jobs(jobs, start_worker):
    name = f"seed_{secrets.token_hex(3)}"
    jobs.execute(SEED_TABLE.format(name=name))
    try:
        # A row written for the seed before the upgrade survives it.
        jobs.execute(f"INSERT INTO `{name}` (target, time_created) VALUES ('t', UNIX_TIMESTAMP())")
        schema = (ROOT / "schema.sql").read_text()
        schema = schema.replace("`jobs_schedules`", f"`{name}_schedules`")
        schema = schema.replace("`jobs_workers`", f"`{name}_workers`")
        for _ in range(2):  # running it twice is safe
            for statement in schema.replace("`jobs`", f"`{name}`").split(";"):
                if statement.strip():
                    jobs.execute(statement)

        config = {
            "name": "seed",
            "listen": f"tcp://127.0.0.1:{free_port()}",
            "database": jobs.db.url_string,
            "table": name,
            "launcher": {"command": "x"},
            "targets": {"t": 1},
        }
        check = subprocess.run(
            [sys.executable, "-m", "jobd", "--check", "--config", "/dev/stdin"],
            input=yaml.safe_dump(config), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr

        worker = start_worker(
            {"t": 1}, command="printf 'a\\360\\237\\230\\200b %s' {id}", table=name
        )
        worker.request("poll")

        def rows():
            return jobs.execute(f"SELECT id, status, result, stdout FROM `{name}` ORDER BY id")

        wait_for(lambda: all(r[1] == "done" for r in rows()), 15, "the seed table's jobs")
        ((old_id, _, result, stdout),) = rows()
        assert result == "ok"
        # The upgrade added the instance columns and the workers table; the seed's own
        # INSERT still works after it, and the worker's instance holds its rows.
        jobs.execute(f"INSERT INTO `{name}` (target, time_created) VALUES ('t', UNIX_TIMESTAMP())")
        worker.request("poll")
        wait_for(lambda: all(r[1] == "done" for r in rows()), 15, "the job added after")
        instance = worker.request("status")["instance"]["instance"]
        assert jobs.execute(f"SELECT instance, rescues FROM `{name}`") == [
            (instance, 0), (instance, 0),
        ]  # fmt: skip
        assert jobs.execute(f"SELECT state FROM `{name}_workers`") == [("running",)]
        # The emoji does not fit the 3-byte utf8 column: it is replaced, the row is written.
        assert stdout == f"a\ufffdb {old_id}"
        # The row shows the outcome was written; only the ERROR line shows how: the column
        # refused the batch, and the worker fell back to writing the rows one by one.
        assert "writing them one by one" in worker.log()
    finally:
        jobs.execute(f"DROP TABLE IF EXISTS `{name}`, `{name}_schedules`, `{name}_workers`")
