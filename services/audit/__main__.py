"""`python -m services.audit`: the audit service alone, configured from MIXIP_* variables."""

from mixip.runtime.server import serve
from services.audit.app import build

raise SystemExit(serve("audit", build))
