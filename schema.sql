-- The jobs table of jobd.  The first twelve columns and the first key are exactly
-- those of the jobd seed, so an INSERT written for the seed's table works unchanged;
-- the columns after them are jobd's own and all have defaults.
-- The table name is configurable (`table:` in the config): replace `jobs` below.
CREATE TABLE IF NOT EXISTS `jobs` (
  `id` int(10) UNSIGNED NOT NULL AUTO_INCREMENT,
  `target` char(16) NOT NULL,
  `slot` char(16) DEFAULT NULL,                        -- NULL means the slot "default"
  `time_created` int(10) UNSIGNED NOT NULL DEFAULT (UNIX_TIMESTAMP()),
  `time_started` int(10) UNSIGNED NOT NULL DEFAULT 0,
  `time_finished` int(10) UNSIGNED NOT NULL DEFAULT 0,
  `status` enum('waiting','manual','accepted','running','done','ignored') NOT NULL DEFAULT 'waiting',
  `result` enum('ok','fail') DEFAULT NULL,
  `return_code` tinyint(3) UNSIGNED DEFAULT NULL,
  `sig` char(10) DEFAULT NULL,                          -- e.g. 'SIGKILL' when killed by a signal
  `stdout` mediumtext DEFAULT NULL,
  `stderr` mediumtext DEFAULT NULL,
  -- jobd's own columns
  `priority` smallint NOT NULL DEFAULT 0,               -- higher starts first within a slot
  `run_at` int(10) UNSIGNED DEFAULT NULL,               -- not before this UNIX time; NULL/0: now
  `attempts` smallint UNSIGNED NOT NULL DEFAULT 0,      -- times the job was started
  `worker` varchar(64) DEFAULT NULL,                    -- the worker that claimed the row
  `time_claimed` int(10) UNSIGNED NOT NULL DEFAULT 0,   -- when that worker claimed it
  `attempt_log` text DEFAULT NULL,                      -- one line per earlier failed attempt
  PRIMARY KEY (`id`),
  KEY `status_target_idx` (`status`, `target`, `id`),
  KEY `claim_idx` (`status`, `target`, `priority` DESC, `id`),
  KEY `worker_idx` (`worker`, `status`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
