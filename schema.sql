-- The jobs table of jobd.  The first twelve columns and the first key are exactly
-- those of the jobd seed, so an INSERT written for the seed's table works unchanged.
-- The columns after them are jobd's own and all have defaults.
-- The table name is configurable (`table:` in the config): replace `jobs` below.
CREATE TABLE IF NOT EXISTS `jobs` (
  `id` int(10) UNSIGNED NOT NULL AUTO_INCREMENT,
  `target` char(16) NOT NULL,
  `slot` char(16) DEFAULT NULL,                        -- NULL means the slot "default"
  `time_created` int(10) UNSIGNED NOT NULL DEFAULT (UNIX_TIMESTAMP()),
  `time_started` int(10) UNSIGNED NOT NULL DEFAULT 0,
  `time_finished` int(10) UNSIGNED NOT NULL DEFAULT 0,
  `status` enum('waiting','manual','accepted','running','done','ignored') NOT NULL DEFAULT 'waiting',
  `result` enum('ok','fail','cancelled') DEFAULT NULL,
  `return_code` tinyint(3) UNSIGNED DEFAULT NULL,
  `sig` char(10) DEFAULT NULL,                          -- e.g. 'SIGKILL' when killed by a signal
  `stdout` mediumtext DEFAULT NULL,
  `stderr` mediumtext DEFAULT NULL,
  -- jobd's own columns
  `priority` smallint NOT NULL DEFAULT 0,               -- higher starts first within a slot
  `run_at` int(10) UNSIGNED DEFAULT NULL,               -- not before this UNIX time (NULL or 0: now)
  `attempts` smallint UNSIGNED NOT NULL DEFAULT 0,      -- times the job was started
  `worker` varchar(64) DEFAULT NULL,                    -- the worker that claimed the row
  `time_claimed` int(10) UNSIGNED NOT NULL DEFAULT 0,   -- when that worker claimed it
  `attempt_log` text DEFAULT NULL,                      -- one line per earlier failed attempt
  `data` mediumtext DEFAULT NULL CHECK (`data` IS NULL OR JSON_VALID(`data`)),  -- JSON, given to the launcher on stdin
  `callback_url` varchar(1024) DEFAULT NULL,            -- POSTed the outcome when done
  `callback_result` varchar(255) DEFAULT NULL,          -- how that delivery went
  `schedule_id` int(10) UNSIGNED DEFAULT NULL,          -- the schedule that created the row
  `scheduled_at` int(10) UNSIGNED DEFAULT NULL,         -- the fire time it was created for
  `instance` char(16) DEFAULT NULL,                     -- the worker instance holding the row (jobs_workers)
  `rescues` smallint UNSIGNED NOT NULL DEFAULT 0,       -- times it was taken back from a dead worker
  `duration_ms` int(10) UNSIGNED DEFAULT NULL,          -- how long its last start ran, measured by the worker
  `retry_of` int(10) UNSIGNED DEFAULT NULL,             -- the job this one is a retry of (the dashboard)
  `result_json` mediumtext DEFAULT NULL CHECK (`result_json` IS NULL OR JSON_VALID(`result_json`)),  -- what the job wrote to JOBD_RESULT_FD
  `progress` float DEFAULT NULL,                        -- 0..1, the last one the job wrote to JOBD_PROGRESS_FD
  `progress_message` varchar(255) DEFAULT NULL,         -- and its message
  `cancel_requested` tinyint(1) NOT NULL DEFAULT 0,     -- 1: stop it (jobctl cancel of a claimed row)
  `unique_key` varchar(255) DEFAULT NULL,               -- at most one unfinished job a target and key
  `unique_active` varchar(255) AS (IF(`status` IN ('waiting','manual','accepted','running'), `unique_key`, NULL)) VIRTUAL,
  `submitted_by` varchar(64) DEFAULT NULL,              -- the CURVE key that submitted it over the wire
  PRIMARY KEY (`id`),
  KEY `status_target_idx` (`status`, `target`, `id`),
  KEY `claim_idx` (`status`, `target`, `priority` DESC, `id`),
  KEY `worker_idx` (`worker`, `status`),
  KEY `due_idx` (`status`, `target`, `run_at`),
  KEY `finished_idx` (`status`, `time_finished`),
  UNIQUE KEY `schedule_fire_idx` (`schedule_id`, `scheduled_at`),
  KEY `instance_idx` (`instance`, `status`),
  UNIQUE KEY `unique_idx` (`unique_active`, `target`),
  KEY `submitter_status_idx` (`submitted_by`, `status`, `target`),
  KEY `submitter_time_idx` (`submitted_by`, `target`, `time_created`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Upgrading a table made for the jobd seed (or by an older jobd): these add whatever
-- is missing and change nothing that is there, so running this file again is safe.
-- A seed table is `utf8` (3-byte): output with characters beyond that (emoji) is then
-- stored with U+FFFD in their place.  To keep them, convert it once (a table rebuild):
--   ALTER TABLE `jobs` CONVERT TO CHARACTER SET utf8mb4
ALTER TABLE `jobs`
  MODIFY `time_created` int(10) UNSIGNED NOT NULL DEFAULT (UNIX_TIMESTAMP()),
  ADD COLUMN IF NOT EXISTS `priority` smallint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS `run_at` int(10) UNSIGNED DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `attempts` smallint UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS `worker` varchar(64) DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `time_claimed` int(10) UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS `attempt_log` text DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `data` mediumtext DEFAULT NULL CHECK (`data` IS NULL OR JSON_VALID(`data`)),
  ADD COLUMN IF NOT EXISTS `callback_url` varchar(1024) DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `callback_result` varchar(255) DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `schedule_id` int(10) UNSIGNED DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `scheduled_at` int(10) UNSIGNED DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `instance` char(16) DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `rescues` smallint UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS `duration_ms` int(10) UNSIGNED DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `retry_of` int(10) UNSIGNED DEFAULT NULL,
  MODIFY `result` enum('ok','fail','cancelled') DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `result_json` mediumtext DEFAULT NULL CHECK (`result_json` IS NULL OR JSON_VALID(`result_json`)),
  ADD COLUMN IF NOT EXISTS `progress` float DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `progress_message` varchar(255) DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `cancel_requested` tinyint(1) NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS `unique_key` varchar(255) DEFAULT NULL,
  ADD COLUMN IF NOT EXISTS `unique_active` varchar(255) AS (IF(`status` IN ('waiting','manual','accepted','running'), `unique_key`, NULL)) VIRTUAL,
  ADD COLUMN IF NOT EXISTS `submitted_by` varchar(64) DEFAULT NULL,
  ADD KEY IF NOT EXISTS `claim_idx` (`status`, `target`, `priority` DESC, `id`),
  ADD KEY IF NOT EXISTS `worker_idx` (`worker`, `status`),
  ADD KEY IF NOT EXISTS `due_idx` (`status`, `target`, `run_at`),
  ADD KEY IF NOT EXISTS `finished_idx` (`status`, `time_finished`),
  ADD UNIQUE KEY IF NOT EXISTS `schedule_fire_idx` (`schedule_id`, `scheduled_at`),
  ADD KEY IF NOT EXISTS `instance_idx` (`instance`, `status`),
  ADD UNIQUE KEY IF NOT EXISTS `unique_idx` (`unique_active`, `target`),
  ADD KEY IF NOT EXISTS `submitter_status_idx` (`submitted_by`, `status`, `target`),
  ADD KEY IF NOT EXISTS `submitter_time_idx` (`submitted_by`, `target`, `time_created`);

-- Finished rows moved out of the jobs table by `jobctl purge --archive`: the same
-- columns and keys.  (Run after the upgrade above, so that it has all of them.)
CREATE TABLE IF NOT EXISTS `jobs_archive` LIKE `jobs`;

-- Recurring schedules (jobctl schedule ...). Each fire time creates exactly one row in
-- the jobs table, however many schedulers run: the unique key on (schedule_id,
-- scheduled_at) there makes a second insert for the same fire time a no-op.
CREATE TABLE IF NOT EXISTS `jobs_schedules` (
  `id` int(10) UNSIGNED NOT NULL AUTO_INCREMENT,
  `name` varchar(64) NOT NULL,
  `cron` varchar(255) DEFAULT NULL,                     -- a cron expression, or
  `interval_seconds` int(10) UNSIGNED DEFAULT NULL,     -- a fixed interval
  `timezone` varchar(64) NOT NULL DEFAULT 'UTC',        -- for cron expressions
  `target` char(16) NOT NULL,
  `slot` char(16) DEFAULT NULL,
  `priority` smallint NOT NULL DEFAULT 0,
  `data` mediumtext DEFAULT NULL CHECK (`data` IS NULL OR JSON_VALID(`data`)),
  `catch_up` enum('once','skip') NOT NULL DEFAULT 'once',  -- after downtime
  `enabled` tinyint(1) NOT NULL DEFAULT 1,
  `last_fire` int(10) UNSIGNED DEFAULT NULL,
  `next_fire` int(10) UNSIGNED DEFAULT NULL,
  `time_created` int(10) UNSIGNED NOT NULL DEFAULT (UNIX_TIMESTAMP()),
  PRIMARY KEY (`id`),
  UNIQUE KEY `name_idx` (`name`),
  KEY `due_idx` (`enabled`, `next_fire`),
  CHECK ((`cron` IS NULL) <> (`interval_seconds` IS NULL))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Worker instances: one row for each start of a worker.  A running instance writes its
-- heartbeat (the database's clock, UNIX seconds) every heartbeat_interval seconds, and one
-- whose heartbeat is older than its lease is dead, and a rescuer (jobd-master with a
-- database, or a worker with `rescuer: true`) settles the rows it held.
CREATE TABLE IF NOT EXISTS `jobs_workers` (
  `instance` char(16) NOT NULL,                          -- random, chosen at the start
  `name` varchar(64) NOT NULL,                           -- the worker's name
  `host` varchar(255) NOT NULL,
  `pid` int(10) UNSIGNED NOT NULL,
  `version` varchar(32) NOT NULL,
  `targets` text NOT NULL CHECK (JSON_VALID(`targets`)), -- {target: {slots, max_attempts, on_rescue, max_rescues}}
  `started` decimal(13,3) NOT NULL,                      -- UNIX time, the database's clock
  `heartbeat` decimal(13,3) NOT NULL,                    -- the last one, likewise
  `beats` int(10) UNSIGNED NOT NULL DEFAULT 0,
  `lease` decimal(8,3) NOT NULL,                         -- seconds after `heartbeat` it is alive
  `state` enum('running','stopped','rescued') NOT NULL DEFAULT 'running',
  `ended` decimal(13,3) DEFAULT NULL,                    -- when it stopped or was rescued
  `rescued_by` varchar(128) DEFAULT NULL,                -- who settled its rows
  PRIMARY KEY (`instance`),
  KEY `state_idx` (`state`, `heartbeat`),
  KEY `name_idx` (`name`, `state`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
