"""The wire: what crosses a ZeroMQ socket.

`protocol` (request tables of both daemons, error codes, framing) over `checks` (the
checkers of request data); `dispatch` (answering a request with its handler) and
`endpoint` (one socket, both directions); `curve` (keys and encryption); `client` (the
light request client) and `subscription` (job events).  Knows no database.
"""
