"""What both daemons share around their core: the command line (`command`), systemd
(`systemd`), logging (`logs`), retrying with backoff (`backoff`), reloading (`reload`)
and the scheduler of recurring schedules (`scheduler`)."""
