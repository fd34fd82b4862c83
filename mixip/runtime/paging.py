"""Opaque page tokens (AIP-158): a position plus a fingerprint of the filters it was made for."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from mixip.runtime.errors import InvalidArgument
from mixip.runtime.validation import ID_PATTERN

MAX_TOKEN_LENGTH = 1024
T = TypeVar("T")
P = TypeVar("P")


class PageReply(Protocol):
    """A List response: its items and where the next page starts (empty at the end)."""

    @property
    def next_page_token(self) -> str: ...


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page of a peer's listing as a peer adapter hands it on: the items, and the token of the
    next page (empty at the end)."""

    items: list[T]
    next_page_token: str


R = TypeVar("R", bound=PageReply)
_MAX_POSITION = 2**63 - 1  # a BIGINT


def _fingerprint(filters: dict[str, Any]) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(position: Any, filters: dict[str, Any]) -> str:
    payload = json.dumps({"p": position, "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _plausible(position: Any) -> bool:
    """Positions we issue: a sequence number, an identifier, or a list of identifiers. Anything
    else was forged and must not reach a query."""
    if isinstance(position, bool):
        return False
    if isinstance(position, int):
        return 0 <= position <= _MAX_POSITION
    if isinstance(position, str):
        return ID_PATTERN.fullmatch(position) is not None
    if isinstance(position, list):
        return 0 < len(position) <= 4 and all(
            isinstance(p, str) and ID_PATTERN.fullmatch(p) for p in position
        )
    return False


def decode_page_token(
    token: str, filters: dict[str, Any], *, kind: type = int, field_name: str = "page_token"
) -> Any:
    """The position stored in `token` (of type `kind`), or None for the first page."""
    if not token:
        return None
    refused = InvalidArgument.one(field_name, "not a token this service issued")
    if len(token) > MAX_TOKEN_LENGTH:
        raise refused
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, fingerprint = payload["p"], payload["f"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise refused from exc
    if not isinstance(position, kind) or not _plausible(position):
        raise refused
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument.one(
            field_name, "the filters changed since this token was issued; start from the first page"
        )
    return position


def fetch_limit(page_size: int) -> int:
    """How many rows a page query fetches: one beyond the page, to learn whether more follow."""
    return page_size + 1


def page_of(
    rows: Sequence[T], page_size: int, position: Callable[[T], P]
) -> tuple[list[T], P | None]:
    """The page among `rows` (fetched with `fetch_limit(page_size)`), and the position of its last
    row when more rows follow (None at the end)."""
    if len(rows) > page_size:
        page = list(rows[:page_size])
        return page, position(page[-1])
    return list(rows), None


def next_page_token(position: Any, filters: dict[str, Any]) -> str:
    """The `next_page_token` of a page that ended at `position`: empty at the end (None)."""
    return encode_page_token(position, filters) if position else ""


def every_page(fetch: Callable[[str], R]) -> Iterator[R]:
    """Every page of a List call, for a caller that wants the whole listing: `fetch(page_token)`
    from the first page ("") until a page's `next_page_token` is empty."""
    token = ""
    while True:
        page = fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return


def all_items(fetch: Callable[[str], Page[T]]) -> list[T]:
    """Every item of a listing, following `fetch(page_token)` from the first page to the last
    (`every_page`)."""
    return [item for page in every_page(fetch) for item in page.items]
