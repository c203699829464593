"""The Python job API on a jobs table (import it from jobd.client): `jobs` (AsyncJobd:
submit, look, wait, stats, purge), `schedules` (its recurring schedules), `sync` (Jobd,
the blocking twin) and `waiting` (events first, the rows as the truth)."""
