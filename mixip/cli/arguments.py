"""What several commands read from their arguments: a named file's bytes, an ISO 8601 time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from mixip.cli.output import CliError
from mixip.runtime.times import to_timestamp


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def time_option(value: str | None, option: str) -> Timestamp | None:
    """--since, --as-of: an ISO 8601 time (UTC unless it says otherwise); a bad one exits 2."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"{option} {value!r} is not an ISO 8601 time", exit_code=2) from None
    return to_timestamp(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
