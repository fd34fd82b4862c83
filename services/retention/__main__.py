"""`python -m services.retention`: the retention service alone, from MIXIP_* variables."""

from mixip.runtime.server import serve
from services.retention.app import build

raise SystemExit(serve("retention", build))
