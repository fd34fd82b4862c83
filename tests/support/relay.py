"""A loopback TCP relay that stalls a client at a known point: it passes the first `budget`
bytes the clients send, then holds what they send next. A test points a client at it to stop
an upload part-way without a sleep (the client blocks in its send, as on a slow link), kills
the client there, and cuts the held connections (their held bytes are dropped, as a broken
link drops them); connections made after the cut pass everything."""

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
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def cut(self) -> None:
        """Closes the held connections without passing what they hold; later ones pass all."""
        self._cut.set()

    def close(self) -> None:
        self._cut.set()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            counted = not self._cut.is_set()
            for source, sink, held in ((client, upstream, counted), (upstream, client, False)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, held), name="relay", daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(64 * 1024):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                        over = self.sent > self.budget
                    if over:
                        self._cut.wait()
                        return  # cut: what it held is dropped
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
