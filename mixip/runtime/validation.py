"""Request validation that collects every bad field before failing (one BadRequest, AIP-193)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sized
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mixip.runtime.errors import FieldViolation, InvalidArgument
from mixip.runtime.limits import DEFAULT_PAGE_SIZE, MAX_BATCH

# Identifiers chosen by callers (accounts, talents, projects, media): the character set AWS
# Rekognition accepts in ExternalImageId (so a talent id can be stored there unchanged), no
# spaces or path separators, at most 128 characters.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : - (starting with a letter or digit)"
# Earliest and latest timestamps we accept (protobuf allows years 1-9999).
_MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIME = datetime(9999, 12, 31, tzinfo=UTC)
# A drill's "as of" time: not before now (less this slack, for clocks a little apart), and not
# absurdly far ahead.
DRILL_SLACK = timedelta(minutes=5)
DRILL_HORIZON = timedelta(days=36525)  # 100 years


# Characters that only hide or reorder text: C0/C1 controls, bidi embeddings, overrides and
# isolates, surrogates, private use, and the non-characters U+FFFE/U+FFFF.
_BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def _unprintable(ch: str) -> bool:
    code = ord(ch)
    return (
        unicodedata.category(ch) in ("Cc", "Cs", "Co")
        or code in _BIDI_CONTROLS
        or (code & 0xFFFE) == 0xFFFE
    )


class Checks:
    """Accumulates field violations; `done()` raises one InvalidArgument listing all of them."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field_name: str, description: str) -> None:
        self.violations.append(FieldViolation(field_name, description))

    def identifier(self, field_name: str, value: str, *, required: bool = True) -> str:
        if not value:
            if required:
                self.fail(field_name, "required")
            return value
        if ID_PATTERN.fullmatch(value) is None:
            self.fail(field_name, f"must be {ID_RULE}")
        return value

    def text(self, field_name: str, value: str, *, max_length: int, required: bool = True) -> str:
        """Free text (names, evidence, idempotency keys): bounded, printable."""
        if required and not value.strip():
            self.fail(field_name, "required")
        elif len(value) > max_length:
            self.fail(field_name, f"at most {max_length} characters")
        elif any(_unprintable(ch) for ch in value):
            self.fail(field_name, "must not contain control, bidi-override or non-characters")
        return value

    def enum(
        self, field_name: str, value: int, enum_type: Any, *, allowed: Iterable[int] = ()
    ) -> int:
        """`enum_type`: a generated enum (its `values()` and `Name()`)."""
        allowed = set(allowed) or {v for v in enum_type.values() if v != 0}
        if value not in allowed:
            names = ", ".join(sorted(enum_type.Name(v) for v in allowed))
            if value == 0:
                self.fail(field_name, f"required; one of {names}")
            else:
                self.fail(field_name, f"unknown value {value}; one of {names}")
        return value

    def page_size(self, field_name: str, value: int) -> int:
        if value == 0:
            return DEFAULT_PAGE_SIZE
        if not 1 <= value <= MAX_BATCH:
            self.fail(
                field_name, f"must be between 1 and {MAX_BATCH} (0 means {DEFAULT_PAGE_SIZE})"
            )
            return DEFAULT_PAGE_SIZE
        return value

    def count(self, field_name: str, items: Sized, *, minimum: int, maximum: int) -> None:
        if not minimum <= len(items) <= maximum:
            self.fail(
                field_name, f"must hold between {minimum} and {maximum} items, got {len(items)}"
            )

    def timestamp(
        self, field_name: str, message: Timestamp, present: bool, *, required: bool = True
    ) -> datetime | None:
        """A google.protobuf.Timestamp field as an aware UTC datetime."""
        if not present:
            if required:
                self.fail(field_name, "required")
            return None
        ts = message
        if not 0 <= ts.nanos < 1_000_000_000:
            self.fail(field_name, "nanos must be in [0, 1e9)")
            return None
        try:
            value = ts.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            self.fail(field_name, "out of range")
            return None
        if not _MIN_TIME <= value <= _MAX_TIME:
            self.fail(field_name, "must be between 1970 and 9999")
            return None
        return value

    def drill_time(
        self, field_name: str, message: Timestamp, present: bool, now: datetime
    ) -> datetime | None:
        """An optional "as of" time of a retention drill: unset (None), or a time at or after
        `now` and at most 100 years ahead."""
        value = self.timestamp(field_name, message, present, required=False)
        if value is None:
            return None
        if value < now - DRILL_SLACK:
            self.fail(field_name, "must not be in the past (a drill runs at a later date)")
            return None
        if value > now + DRILL_HORIZON:
            self.fail(field_name, "must be at most 100 years ahead")
            return None
        return value

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
