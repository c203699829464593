"""The store: every statement jobd runs against MariaDB/MySQL.

`pool` (connections, and the one place database errors are translated into
StorageError), `queries` (the worker's named SQL), `jobstore` (every change of a row's
state, one named method each), `catalog` (what clients read, insert and purge) and
`schedules` (the schedules table).  Knows no sockets and no processes.
"""
