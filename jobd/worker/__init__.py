"""The jobd worker daemon.

`worker` wires the parts together: `claims` decides what to claim (by id or by target,
and when), `queues` holds what was claimed, `runner` starts jobs through the `launcher`
(the one place a process is spawned) and stops them, `outcomes` writes how they ended,
`aftermath` does what follows (retries, events, callbacks), `handlers` answers the
worker requests, `master_link` keeps the worker registered with jobd-master, and
`daemon` runs it all as a process.
"""
