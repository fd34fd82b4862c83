"""`python -m mixip.web`: the review page, on loopback only.

MIXIP_WEB_LISTEN (default 127.0.0.1:8080; a loopback address, anything else is refused) is
where it listens; the gateway is MIXIP_GATEWAY_ADDRESS, else the one in MIXIP_DATA_DIR's
mesh.json (as for the CLI), over TLS trusting MIXIP_GATEWAY_CA when set. `mixip up` starts it.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from mixip.runtime import logs
from mixip.runtime.config import ConfigError, Env, data_dir
from mixip.runtime.connection import Connection
from mixip.runtime.supervision import die_with_supervisor
from mixip.runtime.usererror import UserError
from mixip.web.app import create_app

DEFAULT_LISTEN = "127.0.0.1:8080"
LISTEN_VARIABLE = "MIXIP_WEB_LISTEN"


def listen_address(env: Env) -> tuple[str, int]:
    """(host, port) from MIXIP_WEB_LISTEN: loopback only (the page holds people's keys)."""
    listen = env.str(LISTEN_VARIABLE, DEFAULT_LISTEN)
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{LISTEN_VARIABLE}={listen!r} must be HOST:PORT")
    if host not in ("127.0.0.1", "localhost"):
        raise ConfigError(
            f"{LISTEN_VARIABLE}={listen!r}: the review page listens on loopback only "
            "(127.0.0.1 or localhost)"
        )
    return host, int(port)


def main() -> int:
    env = Env()
    die_with_supervisor()  # stops with `mixip up`, even after a SIGKILL
    try:
        logs.configure()
        host, port = listen_address(env)
        connection = Connection(data_dir(env), env.optional("MIXIP_GATEWAY_ADDRESS"))
        channel = connection.channel()
    except (ConfigError, UserError) as exc:
        print(f"mixip-web: {exc}", file=sys.stderr)
        return 2
    logs.log(logging.getLogger("mixip.web"), "review page serving", address=f"{host}:{port}")
    uvicorn.run(
        create_app(channel),
        host=host,
        port=port,
        log_config=None,  # our structured logging, configured above
        access_log=False,  # no paths in the logs: the gateway's access log records the calls
        server_header=False,
        proxy_headers=False,
    )
    channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
