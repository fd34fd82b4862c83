"""A loopback TCP relay that stalls a client at a known point: it passes the first `budget`
bytes the clients send, then holds what they send next until it is opened. A test points a
client at it to stop an upload part-way without a sleep (the client blocks in its send, as
on a slow link), then kills the client there."""

from __future__ import annotations

import contextlib
import socket
import threading


class StallingRelay:
    def __init__(self, target: str, budget: int) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.budget = budget
        self.sent = 0
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def open(self) -> None:
        """Passes everything from now on (what was held first)."""
        self.opened.set()

    def close(self) -> None:
        self.opened.set()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            for source, sink, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, counted), name="relay", daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(64 * 1024):
                if counted and not self.opened.is_set():
                    with self._lock:
                        self.sent += len(data)
                        over = self.sent > self.budget
                    if over:
                        self.opened.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
