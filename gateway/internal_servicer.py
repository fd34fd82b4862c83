"""The gRPC edge of `GatewayInternalService` (the internal port; callers are checked by the
caller rules, not API keys): validate a purge's request and delegate to retention and the access
log."""

from __future__ import annotations

from datetime import datetime

import grpc

from gateway.access_log import AccessLog
from gateway.retention import MediaRetention
from mixip.gateway.v1 import internal_pb2, internal_pb2_grpc
from mixip.runtime.limits import DEFAULT_ROW_PURGE_BATCH, MAX_ROW_PURGE_BATCH
from mixip.runtime.validation import Checks


class GatewayInternalServicer(internal_pb2_grpc.GatewayInternalServiceServicer):
    """The internal port's API; callers are checked by the caller rules, not API keys."""

    def __init__(self, retention: MediaRetention, access_log: AccessLog) -> None:
        self.retention = retention
        self.access_log = access_log

    def PurgeExpiredMedia(
        self, request: internal_pb2.PurgeExpiredMediaRequest, context: grpc.ServicerContext
    ) -> internal_pb2.PurgeExpiredMediaResponse:
        as_of, batch = self._purge_request(request)
        done = self.retention.purge_expired(as_of, batch)
        return internal_pb2.PurgeExpiredMediaResponse(
            media_deleted=done.media_deleted,
            faces_deleted=done.faces_deleted,
            objects_deleted=done.objects_deleted,
            orphans_deleted=done.orphans_deleted,
            sessions_deleted=done.sessions_deleted,
            done=done.done,
        )

    def PurgeAccessLog(
        self, request: internal_pb2.PurgeAccessLogRequest, context: grpc.ServicerContext
    ) -> internal_pb2.PurgeAccessLogResponse:
        as_of, batch = self._purge_request(request)
        deleted, done = self.access_log.purge(as_of, batch)
        return internal_pb2.PurgeAccessLogResponse(entries_deleted=deleted, done=done)

    def _purge_request(
        self,
        request: internal_pb2.PurgeExpiredMediaRequest | internal_pb2.PurgeAccessLogRequest,
    ) -> tuple[datetime, int]:
        """A purge's `as_of` (required) and batch size (0 means DEFAULT_ROW_PURGE_BATCH)."""
        checks = Checks()
        as_of = checks.timestamp("as_of", request.as_of, request.HasField("as_of"))
        batch = request.batch_size or DEFAULT_ROW_PURGE_BATCH
        if not 1 <= batch <= MAX_ROW_PURGE_BATCH:
            checks.fail(
                "batch_size",
                f"must be between 1 and {MAX_ROW_PURGE_BATCH} (0 means {DEFAULT_ROW_PURGE_BATCH})",
            )
        checks.done()
        assert as_of is not None  # required: checks.done() refused its absence
        return as_of, batch
