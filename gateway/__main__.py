"""`python -m gateway`: the client-facing gateway, configured from MIXIP_* variables."""

from gateway.app import build
from mixip.runtime.server import serve

raise SystemExit(serve("gateway", build))
