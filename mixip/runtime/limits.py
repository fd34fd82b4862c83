"""The mesh's size limits, declared once: every servicer, client and peer adapter imports them."""

from __future__ import annotations

MiB = 1024 * 1024
GiB = 1024 * MiB

MAX_BATCH = 1000
"""The most items one call carries or returns: a page (`page_size`), a batch of consent queries,
a batch of audit events. Callers with more split them into calls of at most this many."""

DEFAULT_PAGE_SIZE = 100
"""The page size of a List call that leaves `page_size` at 0."""

MAX_MESSAGE_BYTES = 80 * MiB
"""The largest gRPC message a server accepts or a client sends (MIXIP_MAX_MESSAGE_BYTES
overrides it): a 64 MiB upload plus its envelope."""

MAX_PIXELS = 40_000_000
"""The most pixels an image or a video frame may have (MIXIP_MATCHER_MAX_PIXELS overrides it): a
memory bound, 120 MB once decoded to BGR. Checked from the header before decoding, and enforced
by OpenCV's image decoders themselves (`mixip.runtime.media.cap_image_decoders`)."""

MAX_REQUEST_BYTES = 1 * MiB
"""The largest request a server accepts for a method that declares no limit of its own
(MIXIP_MAX_REQUEST_BYTES overrides it), checked on the raw bytes before the request is parsed:
parsing comes before authentication, so this bounds what a caller without a key can cost."""

ENVELOPE_BYTES = 64 * 1024
"""Room for a request's other fields around the bytes it carries (a chunk, an image, media)."""

MAX_EVENT_PURGE_BATCH = 100_000
"""The most expired audit events one `PurgeExpired` call deletes (its `batch_size`): the audit
servicer refuses more, retention's MIXIP_RETENTION_PURGE_BATCH may not ask for more."""

DEFAULT_EVENT_PURGE_BATCH = 10_000
"""The batch of a `PurgeExpired` call that leaves `batch_size` at 0."""

MAX_ROW_PURGE_BATCH = 10_000
"""The most rows (media, access-log entries) one purge call of the gateway's internal port
deletes (`PurgeExpiredMedia`, `PurgeAccessLog`: their `batch_size`)."""

DEFAULT_ROW_PURGE_BATCH = 1000
"""The batch of a gateway purge call that leaves `batch_size` at 0."""
