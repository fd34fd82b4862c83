"""The review page served in-process for tests: uvicorn in a thread on an ephemeral port."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette

from mixip.web.page import SESSION_COOKIE


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Serves `app` on 127.0.0.1 (a free port); yields its base URL. The socket listens before
    the server thread starts, so early requests wait in its backlog rather than fail."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def page(base: str, session_id: str, path: str) -> str:
    """The HTML of a page of the review page served at `base`, as the session gets it (a
    status other than 200 fails)."""
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Cookie": f"{SESSION_COOKIE}={session_id}"})
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200, (path, response.status)
    return body
