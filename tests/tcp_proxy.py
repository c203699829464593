"""A TCP proxy for tests that can cut and restore a connection, like a network outage."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target address; `cut()` drops every connection and
    refuses new ones until `restore()`; `hold()` keeps the connections but relays nothing
    until `release()` (a server that stopped answering: what was sent waits);
    `hold_answers()` relays what clients send but keeps the server's answers until
    `release()` (a statement that went through, its answer not come yet).  With
    `capture`, every byte relayed (both directions) is kept in `captured`, as an
    eavesdropper on the wire would see it.

    `client_held` is set once a client has sent something that `hold()` keeps, and
    `answer_held` once a server has answered something that `hold_answers()` keeps: the
    moment a statement (or its answer) is stuck here, not just possibly on its way."""

    def __init__(self, target: tuple[str, int], capture: bool = False) -> None:
        self.target = target
        self.port = 0
        self.capture = capture
        self.captured = bytearray()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._held = threading.Event()
        self._answers_held = threading.Event()
        self.client_held = threading.Event()
        self.answer_held = threading.Event()
        self.restore()

    def hold(self) -> None:
        self.client_held.clear()
        self._held.set()

    def hold_answers(self) -> None:
        self.answer_held.clear()
        self._answers_held.set()

    def release(self) -> None:
        self._held.clear()
        self._answers_held.clear()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                if self._answers_held.is_set():
                    if b in readable:
                        self.answer_held.set()
                    readable = [sock for sock in readable if sock is a]  # a: the client
                if self._held.is_set() and a in readable:
                    self.client_held.set()
                if self._held.is_set() or not readable:
                    time.sleep(0.01)  # what came stays in the kernel's buffers
                    continue
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self.capture:
                        with self._lock:
                            self.captured += data
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._conns.discard(a)
                self._conns.discard(b)
