"""Fail-closed edges of the servers: internal services refuse callers without an mTLS identity
unless explicitly started in development mode on loopback, and the interceptor wraps (or
refuses) every kind of RPC."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.runtime import acl
from mixip.runtime.client import open_channel
from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, PermissionDenied, error_details
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.server import ServiceApp, start_server
from mixip.runtime.times import to_timestamp
from mixip.runtime.tls import channel_credentials, init_certs, server_credentials
from services.audit.app import SERVICE_NAME, AuditApp
from services.audit.store import Base, EventRow
from tests.support.status import expect_error


@pytest.fixture
def audit_app(database_url, clock, tmp_path):
    return AuditApp(
        Database(database_url("audit"), Base.metadata), LocalKeyWrapper(tmp_path / "kek.key"), clock
    )


def _event(clock) -> audit_pb2.MatchEventInput:
    return audit_pb2.MatchEventInput(
        idempotency_key="m:0",
        project_id="p",
        media_id="m",
        label=3,
        reason=2,
        similarity=0.1,
        actor="key",
        occurred_at=to_timestamp(clock()),
    )


def _events(app) -> int:
    with app.db.read() as session:
        return session.scalar(select(func.count()).select_from(EventRow))


def test_a_plaintext_internal_service_refuses_every_caller_without_the_development_flag(
    audit_app, serve, clock, caplog
):
    running = serve(audit_app, insecure_dev=False)
    stub = audit_pb2_grpc.AuditServiceStub(
        open_channel(f"127.0.0.1:{running.port}", [SERVICE_NAME], timeout_seconds=5)
    )
    with caplog.at_level(logging.WARNING, logger="mixip.acl"):
        details = expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            stub.RecordMatchEvents,
            # the request names an account: without an identity it is not believed
            audit_pb2.RecordMatchEventsRequest(account_id="a", events=[_event(clock)]),
        )
    assert details.reason == "MTLS_REQUIRED"
    assert "mutual TLS" in details.message
    assert _events(audit_app) == 0
    assert any("caller refused" in r.getMessage() for r in caplog.records)


def test_the_development_flag_serves_plaintext_callers_on_loopback(audit_app, serve, clock):
    running = serve(audit_app, insecure_dev=True)
    stub = audit_pb2_grpc.AuditServiceStub(
        open_channel(f"127.0.0.1:{running.port}", [SERVICE_NAME], timeout_seconds=5)
    )
    reply = stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(account_id="a", events=[_event(clock)])
    )
    assert reply.recorded_count == 1 and _events(audit_app) == 1


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:0", "127.attacker.example:0", "127.0.0.1.nip.io:0", "[::ffff:10.0.0.1]:0"]
)
def test_the_development_flag_is_refused_beyond_loopback(audit_app, listen):
    """A DNS name that starts like a loopback address is not one (#9)."""
    with pytest.raises(ConfigError, match="loopback only"):
        start_server(audit_app, listen=listen, insecure_dev=True)
    audit_app.close()


def test_every_request_is_measured_against_its_methods_limit_before_it_is_parsed(
    audit_app, serve, clock
):
    """#7 on an internal service: a method's own limit (a full batch of audit events) or the
    server's default (here 64 KiB), health included; beyond the largest, gRPC refuses."""
    running = serve(audit_app, max_request_bytes=64 * 1024)
    channel = open_channel(f"127.0.0.1:{running.port}", [SERVICE_NAME], timeout_seconds=5)
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    over = "a" * 70_000
    details = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.VerifyLog,
        audit_pb2.VerifyLogRequest(account_id=over),
    )
    assert details.reason == "REQUEST_TOO_LARGE" and "at most 65536" in details.message
    with pytest.raises(grpc.RpcError) as refused:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=over))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    batch = [_event(clock) for _ in range(1000)]
    for i, event in enumerate(batch):
        event.idempotency_key = f"m:{i}:" + "k" * 120  # a full batch: about 150 KB
    request = audit_pb2.RecordMatchEventsRequest(account_id="a", events=batch)
    assert request.ByteSize() > 64 * 1024
    assert stub.RecordMatchEvents(request).recorded_count == 1000
    huge = audit_pb2.RecordMatchEventsRequest(account_id="a", events=batch * 40)
    expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.RecordMatchEvents, huge)
    assert _events(audit_app) == 1000


def test_the_development_flag_gives_way_to_mutual_tls(audit_app, serve, tmp_path, clock):
    """With certificates, the flag changes nothing: the caller rules apply."""
    certs = init_certs(tmp_path / "tls")[0].parent
    running = serve(audit_app, insecure_dev=True, credentials=server_credentials(certs, "audit"))
    address = f"127.0.0.1:{running.port}"

    def stub(identity):
        channel = open_channel(
            address,
            [SERVICE_NAME],
            timeout_seconds=5,
            credentials=channel_credentials(certs, identity),
        )
        return audit_pb2_grpc.AuditServiceStub(channel)

    request = audit_pb2.RecordMatchEventsRequest(account_id="a", events=[_event(clock)])
    assert stub("gateway").RecordMatchEvents(request).recorded_count == 1
    details = expect_error(
        grpc.StatusCode.PERMISSION_DENIED, stub("matcher").RecordMatchEvents, request
    )
    assert details.reason == "CALLER_NOT_ALLOWED"


def test_development_mode_still_refuses_rpcs_missing_from_the_caller_rules():
    with pytest.raises(PermissionDenied):
        acl.development("/mixip.audit.v1.AuditService/NoSuchRpc", None)
    assert acl.development("/mixip.audit.v1.AuditService/VerifyLog", _NoIdentity()) == (
        acl.DEVELOPMENT_CALLER
    )


class _NoIdentity:
    def auth_context(self):
        return {}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_internal_service_process_will_not_start_plaintext_without_the_flag(tmp_path, backend):
    env = {**os.environ, "MIXIP_DATA_DIR": str(tmp_path), "MIXIP_AUDIT_LISTEN": "127.0.0.1:0"}
    for name in ("MIXIP_TLS_DIR", "MIXIP_INSECURE_DEV"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "services.audit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to serve audit without mutual TLS" in result.stderr
    assert "MIXIP_INSECURE_DEV" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_service_on_a_data_dir_that_still_holds_key_files_refuses_rather_than_make_new_keys(
    tmp_path, backend
):
    """Issue 17, #2: keys moved to MIXIP_KEY_DIR; a service started alone on an old data
    directory must not seal new data under a fresh key beside the old one."""
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "audit-kek.key").write_bytes(b"k" * 32)
    env = {**os.environ, "MIXIP_DATA_DIR": str(data), "MIXIP_INSECURE_DEV": "true"}
    env |= {"MIXIP_AUDIT_LISTEN": "127.0.0.1:0", "MIXIP_KEY_DIR": str(tmp_path / "keys")}
    env.pop("MIXIP_TLS_DIR", None)
    command = [sys.executable, "-m", "services.audit"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"mixip audit: key material in {data / 'keys'}: keys live in the key directory now "
        f"(MIXIP_KEY_DIR, here {tmp_path / 'keys'}); move it there (`mixip up` does it once)"
    )
    assert not (tmp_path / "keys").exists() and not (data / "audit.db").exists()  # nothing made


# -- the interceptor and RPC kinds ---------------------------------------------------------------

SERVICE = "test.v1.EchoService"


def _identity(data: bytes) -> bytes:
    return data


class _OddHandler(grpc.RpcMethodHandler):
    """A handler of no kind the interceptor knows."""

    request_streaming = response_streaming = False
    request_deserializer = response_serializer = None
    unary_unary = unary_stream = stream_unary = stream_stream = None


class EchoApp(ServiceApp):
    """A service with all four kinds of RPC (our protos have no response streams yet)."""

    name = "echo"

    def __init__(self) -> None:
        self.behaviour_ran: list[str] = []

    def _numbers(self, request: bytes, context):
        self.behaviour_ran.append("Count")
        for i in range(int(request or b"0")):
            if i == 2:
                raise FailedPrecondition("stopped at two", reason="STOPPED")
            yield str(i).encode()

    def _chat(self, requests, context):
        self.behaviour_ran.append("Chat")
        for request in requests:
            yield request.upper()

    def register(self, server: grpc.Server) -> Sequence[str]:
        def kind(factory, behaviour):
            return factory(behaviour, request_deserializer=_identity, response_serializer=_identity)

        handlers = {
            "Echo": kind(grpc.unary_unary_rpc_method_handler, lambda r, c: r),
            "Sum": kind(
                grpc.stream_unary_rpc_method_handler, lambda rs, c: str(sum(map(int, rs))).encode()
            ),
            "Count": kind(grpc.unary_stream_rpc_method_handler, self._numbers),
            "Chat": kind(grpc.stream_stream_rpc_method_handler, self._chat),
        }

        class Generic(grpc.GenericRpcHandler):
            def service(self, details):
                if details.method == f"/{SERVICE}/Odd":
                    return _OddHandler()
                _, _, name = details.method.rpartition("/")
                return handlers.get(name) if details.method.startswith(f"/{SERVICE}/") else None

        server.add_generic_rpc_handlers((Generic(),))
        return [SERVICE]


@pytest.fixture
def echo(serve):
    """The echo service with an authorizer that records every call and refuses `intruder`."""
    seen: list[str] = []

    def authorize(method, context):
        caller = dict(context.invocation_metadata()).get("caller", "")
        seen.append(method.rpartition("/")[2])
        if caller == "intruder":
            raise PermissionDenied("not you", reason="CALLER_NOT_ALLOWED")
        return caller

    app = EchoApp()
    running = serve(app, authorize=authorize)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield app, channel, seen
    channel.close()


def _method(channel, kind: str, name: str):
    return getattr(channel, kind)(
        f"/{SERVICE}/{name}", request_serializer=_identity, response_deserializer=_identity
    )


def test_every_rpc_kind_passes_through_the_interceptor(echo):
    _, channel, seen = echo
    assert _method(channel, "unary_unary", "Echo")(b"hi", timeout=5) == b"hi"
    assert _method(channel, "stream_unary", "Sum")(iter([b"1", b"2"]), timeout=5) == b"3"
    assert list(_method(channel, "unary_stream", "Count")(b"2", timeout=5)) == [b"0", b"1"]
    assert list(_method(channel, "stream_stream", "Chat")(iter([b"a", b"b"]), timeout=5)) == [
        b"A",
        b"B",
    ]
    assert seen == ["Echo", "Sum", "Count", "Chat"]


def test_a_streaming_rpc_is_authorized_before_its_behaviour_runs(echo):
    app, channel, seen = echo
    meta = (("caller", "intruder"),)
    for kind, name, request in (
        ("unary_stream", "Count", b"3"),
        ("stream_stream", "Chat", iter([b"a"])),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            list(_method(channel, kind, name)(request, metadata=meta, timeout=5))
        details = error_details(caught.value)
        assert details.code == grpc.StatusCode.PERMISSION_DENIED
        assert details.reason == "CALLER_NOT_ALLOWED"
    assert seen == ["Count", "Chat"] and app.behaviour_ran == []


def test_an_error_raised_while_streaming_is_mapped_to_its_status(echo, caplog):
    _, channel, _ = echo
    with caplog.at_level(logging.INFO, logger="mixip.server"):
        responses = _method(channel, "unary_stream", "Count")(b"5", timeout=5)
        received = [next(responses), next(responses)]
        with pytest.raises(grpc.RpcError) as caught:
            next(responses)
    details = error_details(caught.value)
    assert received == [b"0", b"1"]
    assert (details.code, details.reason, details.domain) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STOPPED",
        "echo.mixip",
    )
    lines = [r for r in caplog.records if r.getMessage() == "rpc"]
    assert any(
        r.fields["method"] == f"/{SERVICE}/Count" and r.fields["code"] == "FAILED_PRECONDITION"
        for r in lines
    )


def test_a_handler_of_an_unknown_kind_is_refused_not_served_unchecked(echo):
    _, channel, seen = echo
    with pytest.raises(grpc.RpcError) as caught:
        _method(channel, "unary_unary", "Odd")(b"x", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not served" in caught.value.details()
    assert seen == []
