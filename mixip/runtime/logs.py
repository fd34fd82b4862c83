"""Structured logs: one line per event, `key=value` pairs (or JSON with MIXIP_LOG_FORMAT=json).

Never pass personal data as a field: no talent ids, no names, no image bytes. Account, media and
request ids are fine.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from contextvars import ContextVar

from mixip.runtime.config import ConfigError
from mixip.runtime.telemetry import current_trace_id

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")


class _Formatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            fields["request_id"] = request_id
        trace_id = current_trace_id()
        if trace_id:
            fields["trace_id"] = trace_id
        fields.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type and where it was raised, never its message: messages of
            # driver errors quote SQL parameters, which may hold personal data.
            fields["error"] = record.exc_info[0].__name__
            frames = traceback.extract_tb(record.exc_info[2])
            fields["where"] = " < ".join(
                f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(frames[-6:])
            )
        if self.as_json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(ch in text for ch in ' ="'):
        return json.dumps(text)
    return text


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def settings(level: str | None = None) -> tuple[str, bool]:
    """The log level and whether to write JSON, from MIXIP_LOG_LEVEL and MIXIP_LOG_FORMAT."""
    name = (level or os.environ.get("MIXIP_LOG_LEVEL", "INFO")).upper()
    if name not in LEVELS:
        raise ConfigError(f"MIXIP_LOG_LEVEL must be one of {', '.join(LEVELS)}, not {name!r}")
    form = os.environ.get("MIXIP_LOG_FORMAT", "kv")
    if form not in ("kv", "json"):
        raise ConfigError(f"MIXIP_LOG_FORMAT must be kv or json, not {form!r}")
    return name, form == "json"


def configure(level: str | None = None) -> None:
    """Installs the structured formatter on the root logger (idempotent)."""
    name, as_json = settings(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(name)


def log(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: object) -> None:
    logger.log(level, event, extra={"fields": fields})
