"""Metrics with the conventional gRPC names, one trace through the mesh, health that follows
the database."""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from sqlalchemy import MetaData

from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime import logs, telemetry
from mixip.runtime.db import Database
from mixip.runtime.server import ServiceApp
from tests.support import faces
from tests.support.gateway_calls import consent, enroll, group_photo, upload

GATEWAY = "mixip.gateway.v1.GatewayService"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_call_counts_in_the_conventional_grpc_series(gateway):
    _, meta = gateway.new_account()
    ok = {"grpc_type": "unary", "grpc_service": GATEWAY, "grpc_method": "VerifyAuditLog"}
    bad = {"grpc_type": "unary", "grpc_service": GATEWAY, "grpc_method": "ListConsents"}
    before = (
        _sample("grpc_server_started_total", **ok),
        _sample("grpc_server_handled_total", **ok, grpc_code="OK"),
        _sample("grpc_server_handled_total", **bad, grpc_code="INVALID_ARGUMENT"),
        _sample("grpc_server_handling_seconds_count", **ok),
    )
    gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta)
    with pytest.raises(grpc.RpcError):
        gateway.stub.ListConsents(pb.ListConsentsRequest(talent_id="not valid!"), metadata=meta)
    after = (
        _sample("grpc_server_started_total", **ok),
        _sample("grpc_server_handled_total", **ok, grpc_code="OK"),
        _sample("grpc_server_handled_total", **bad, grpc_code="INVALID_ARGUMENT"),
        _sample("grpc_server_handling_seconds_count", **ok),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]


def test_the_metrics_endpoint_serves_the_series_and_no_talent_id(gateway, clock):
    account, meta = gateway.new_account()
    consent(gateway, meta, clock, "talent-secret-7", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    enroll(gateway, meta, "talent-secret-7", faces.astronaut())
    upload(gateway, meta, group_photo())
    port = telemetry.serve_metrics("127.0.0.1:0")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for name in (
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
    ):
        assert name in text
    assert 'grpc_method="UploadMedia"' in text
    assert "talent-secret-7" not in text
    assert account not in text  # #8: the port has no authentication


@pytest.fixture
def spans():
    telemetry.configure_tracing("tests")  # as a service does (nothing if one already did)
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


def test_one_trace_follows_an_upload_from_the_gateway_to_audit(gateway, clock, spans):
    """The upload's trace reaches the matcher and consent; its audit events are queued in its
    commit and delivered by the audit outbox in a trace of their own (one delivery may carry
    several uploads' events)."""
    gateway.app.audit_outbox.stop()  # delivered below, by hand
    account, meta = gateway.new_account()
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    enroll(gateway, meta, "astronaut", faces.astronaut())
    spans.clear()
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(logs._Formatter(as_json=False))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        upload(gateway, meta, group_photo())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    server_spans = {
        s.name: s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER
    }
    upload_span = server_spans["/mixip.gateway.v1.GatewayService/UploadMedia"]
    chain = [
        "/mixip.matcher.v1.MatcherService/MatchMedia",
        "/mixip.consent.v1.ConsentService/BatchCheckConsent",
    ]
    trace_id = upload_span.context.trace_id
    for name in chain:
        assert server_spans[name].context.trace_id == trace_id, name
        assert server_spans[name].parent is not None  # continued from the caller's traceparent
    assert "/mixip.audit.v1.AuditService/RecordMatchEvents" not in server_spans
    steps = {s.name for s in spans.get_finished_spans() if s.context.trace_id == trace_id}
    assert {"gateway.authenticate", "gateway.upload.commit", "matcher.analyse"} <= steps
    assert gateway.app.audit_outbox.drain(account) == 2
    delivered = [
        s
        for s in spans.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER
        and s.name == "/mixip.audit.v1.AuditService/RecordMatchEvents"
    ]
    assert len(delivered) == 1
    recorded = [
        (span.name, dict(span.attributes or {}), [dict(e.attributes or {}) for e in span.events])
        for span in spans.get_finished_spans()
    ]
    assert "astronaut" not in repr(recorded)  # no talent id in any span, attribute or event
    rpc_lines = [line for line in lines.getvalue().splitlines() if "event=rpc" in line]
    assert len(rpc_lines) >= 3
    assert all(f"trace_id={trace_id:032x}" in line for line in rpc_lines)


class _Proxy:
    """A TCP forwarder to PostgreSQL that can be cut and restored (the database 'goes away')."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.connections.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


class _DbApp(ServiceApp):
    name = "probe"

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, server):
        return []

    def close(self) -> None:
        self.db.dispose()


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            .status
        )


def _until(predicate, timeout: float = 30.0) -> bool:
    """Waits for a condition (the probe's period is 0.1 s), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_step_that_raises_is_an_error_span_naming_the_exception_type_only(spans):
    """A database error's message names the row's ids: a failed step's span keeps the
    exception's type, never its message or traceback."""
    with pytest.raises(ValueError, match="acct_secret"), telemetry.step("gateway.upload.rows"):
        raise ValueError("(media_id, account_id) = ('med_1', 'acct_secret')")
    [span] = [s for s in spans.get_finished_spans() if s.name == "gateway.upload.rows"]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert not span.events and not span.attributes


def test_health_is_not_serving_while_the_database_is_unreachable(pg_test_database, serve):
    if pg_test_database is None:
        pytest.skip("needs MIXIP_TEST_DATABASE_URL (CI sets it)")
    proxy = _Proxy((pg_test_database.host or "127.0.0.1", pg_test_database.port or 5432))
    url = pg_test_database.set(host="127.0.0.1", port=proxy.port)
    db = Database(url.render_as_string(hide_password=False), MetaData())
    try:
        running = serve(_DbApp(db), health_probe_seconds=0.1)
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        assert _health(running.port) == serving
        proxy.cut()
        assert _until(lambda: _health(running.port) == not_serving)
        proxy.restore()
        assert _until(lambda: _health(running.port) == serving)
    finally:
        proxy.close()


def test_a_metric_labelled_with_an_id_is_refused():
    with pytest.raises(ValueError, match="no account or talent ids"):
        telemetry.gauge("mixip_test_faces", "Faces.", lambda: [], labels=("account_id",))


def test_domain_gauges_follow_the_services_state(gateway, clock, retention_factory):
    from mixip.retention.v1 import retention_pb2

    _, meta = gateway.new_account()
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    enroll(gateway, meta, "astronaut", faces.astronaut())
    assert _sample("mixip_matcher_enrolled_faces") >= 1
    assert _sample("mixip_matcher_largest_collection_faces") >= 1

    # The test's consent service dispatches only when told: the revocation waits in its outbox.
    consent(
        gateway,
        meta,
        clock,
        "astronaut",
        cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
        decision=cpb.CONSENT_DECISION_REVOKED,
    )
    clock.advance(minutes=5)
    assert _sample("mixip_consent_outbox_backlog") >= 1
    assert _sample("mixip_consent_outbox_oldest_age_seconds") >= 300

    retention = retention_factory(
        audit=gateway.audit.address,
        matcher=gateway.mesh.matcher.address,
        consent=gateway.mesh.consent.address,
    )
    retention.stub.RunNow(retention_pb2.RunNowRequest(job=retention_pb2.RETENTION_JOB_PURGE))
    assert _sample("mixip_retention_last_success_timestamp_seconds", job="purge") == (
        clock().timestamp()
    )
    assert _sample("mixip_retention_last_purge_rows_deleted") == 0

    clock.advance(hours=5)
    assert _sample("mixip_audit_vault_key_age_seconds") >= 5 * 3600

    # An erasure whose audit step cannot run stays open: the resumer will finish it.
    assert _sample("mixip_gateway_erasure_intents_pending") == 0
    gateway.audit.running.stop(0)
    with pytest.raises(grpc.RpcError):
        gateway.stub.EraseTalent(
            pb.EraseTalentRequest(talent_id="astronaut", request_id="erase-1"), metadata=meta
        )
    assert _sample("mixip_gateway_erasure_intents_pending") == 1
