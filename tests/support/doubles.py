"""Test doubles of our own services, built from the generated servicer bases and served by a
real gRPC server, for tests of a service whose real peer comes in a later layer."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import grpc

from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.paging import decode_page_token, encode_page_token
from mixip.runtime.server import ServiceApp


class MatcherDouble(matcher_pb2_grpc.MatcherServiceServicer):
    """Records DeleteTalentFaces calls, lists the talents of `faces` (account, talent) -> count;
    can be told to fail like a matcher that is down."""

    def __init__(self) -> None:
        self.deletions: list[tuple[str, str, str]] = []
        self.faces: dict[tuple[str, str], int] = {}
        self.fail_with: grpc.StatusCode | None = None
        self.called = threading.Event()
        self.page_limit: int | None = None
        self.list_calls = 0

    def DeleteTalentFaces(self, request, context):
        if self.fail_with is not None:
            context.abort(self.fail_with, "matcher double is down")
        self.deletions.append((request.account_id, request.talent_id, request.request_id))
        deleted = self.faces.pop((request.account_id, request.talent_id), 0)
        self.called.set()
        return matcher_pb2.DeleteTalentFacesResponse(deleted_count=deleted)

    def ListEnrolledTalents(self, request, context):
        """Pages over `faces` by account, then talent. `page_limit` serves smaller pages than
        asked for (as any server may), so a test sees its client follow several pages."""
        if self.fail_with is not None:
            context.abort(self.fail_with, "matcher double is down")
        self.list_calls += 1
        size = min(request.page_size or 100, self.page_limit or 1000)
        filters = {"a": request.account_id}
        after = decode_page_token(request.page_token, filters, kind=list)
        keys = sorted(k for k in self.faces if request.account_id in ("", k[0]))
        if after is not None:
            keys = [k for k in keys if list(k) > after]
        page = keys[:size]
        return matcher_pb2.ListEnrolledTalentsResponse(
            talents=[
                matcher_pb2.EnrolledTalent(account_id=a, talent_id=t, face_count=self.faces[a, t])
                for a, t in page
            ],
            next_page_token=encode_page_token(list(page[-1]), filters) if keys[size:] else "",
        )


class DoubleApp(ServiceApp):
    name = "double"

    def __init__(self, servicer, add_to_server, service_name: str) -> None:
        self.servicer, self.add, self.service_name = servicer, add_to_server, service_name

    def register(self, server: grpc.Server) -> Sequence[str]:
        self.add(self.servicer, server)
        return [self.service_name]
