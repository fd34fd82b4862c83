"""`mixip up`'s stable ports: a default port is used when free (bookmarks survive restarts) and
falls back to a free one, said in one line naming the taken port, when something holds it."""

from __future__ import annotations

import socket

from mixip.cli.launcher import port_or_free


def test_a_free_default_port_is_kept_and_a_taken_one_falls_back_saying_so():
    said: list[str] = []
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        chosen = port_or_free(taken, "gateway", said.append)
        assert chosen != taken
        assert said == [f"port {taken} is taken: the gateway listens on 127.0.0.1:{chosen} instead"]
    said.clear()
    assert port_or_free(taken, "gateway", said.append) == taken  # released: the default again
    assert said == []
