"""`python -m services.consent`: the consent service alone, configured from MIXIP_* variables."""

from mixip.runtime.server import serve
from services.consent.app import build

raise SystemExit(serve("consent", build))
