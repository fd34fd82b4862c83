"""A real webhook receiver for tests: an HTTP server on an ephemeral loopback port that keeps
every request it gets and answers each with the next scripted status (200 once the script is
used up). Tests wait for requests on a condition, never by sleeping."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    def verified_by(self, secret: str) -> dict:
        """The payload, verified with `secret` (raises WebhookVerificationError otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)

    @property
    def signatures(self) -> list[str]:
        return self.headers["webhook-signature"].split(" ")


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: list[int] = []  # the answers to the next requests, in order
        self.hold: threading.Event | None = None  # when set: answers wait for it
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._changed:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver._changed.notify_all()
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Every request so far, once there are at least `count`."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            assert arrived, f"{len(self.requests)} of {count} deliveries arrived"
            return list(self.requests)

    def events(self, secret: str) -> dict[str, dict]:
        """Every request verified with `secret`, deduplicated by webhook-id: id -> payload."""
        unique: dict[str, dict] = {}
        for request in self.requests:
            payload = request.verified_by(secret)
            assert unique.setdefault(request.message_id, payload) == payload
        return unique


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join()
