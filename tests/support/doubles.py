"""Test doubles of our own services, built from the generated servicer bases and served by a
real gRPC server, for tests of a service whose real peer comes in a later layer."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import grpc

from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.server import ServiceApp


class MatcherDouble(matcher_pb2_grpc.MatcherServiceServicer):
    """Records DeleteTalentFaces calls; can be told to fail like a matcher that is down."""

    def __init__(self) -> None:
        self.deletions: list[tuple[str, str, str]] = []
        self.faces: dict[tuple[str, str], int] = {}
        self.fail_with: grpc.StatusCode | None = None
        self.called = threading.Event()

    def DeleteTalentFaces(self, request, context):
        if self.fail_with is not None:
            context.abort(self.fail_with, "matcher double is down")
        self.deletions.append((request.account_id, request.talent_id, request.request_id))
        deleted = self.faces.pop((request.account_id, request.talent_id), 0)
        self.called.set()
        return matcher_pb2.DeleteTalentFacesResponse(deleted_count=deleted)


class DoubleApp(ServiceApp):
    name = "double"

    def __init__(self, servicer, add_to_server, service_name: str) -> None:
        self.servicer, self.add, self.service_name = servicer, add_to_server, service_name

    def register(self, server: grpc.Server) -> Sequence[str]:
        self.add(self.servicer, server)
        return [self.service_name]
