"""`python -m services.matcher`: the matcher alone, configured from MIXIP_* variables."""

from mixip.runtime.server import serve
from services.matcher.app import build

raise SystemExit(serve("matcher", build))
