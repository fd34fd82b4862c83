"""Metrics and traces for every service.

Metrics (prometheus-client) use the go-grpc-prometheus names, so stock gRPC dashboards work:
`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}` and the histogram
`grpc_server_handling_seconds`, each labelled `grpc_type`, `grpc_service`, `grpc_method`. A
service adds its own domain gauges with `gauge`. No label ever carries an account or talent id.

Traces (OpenTelemetry): every server span continues the caller's W3C `traceparent`, and every
channel made by `mixip.runtime.client` sends it on, so one trace follows a request from the
gateway through the matcher, consent and audit. Spans are exported over OTLP when
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and to nothing
otherwise; the trace id is on every log line either way. Within a call, `step` spans name where
its time goes (an upload's authentication, store, match and commit; a match's decode, analysis,
search and consent check): span names only, never an id in an attribute.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import client_interceptor, server_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger("mixip.telemetry")

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _LABELS)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    (*_LABELS, "grpc_code"),
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to its status, in seconds.",
    _LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)


class RpcMetrics:
    """The three conventional series of one RPC, labelled once."""

    def __init__(self, full_method: str, grpc_type: str) -> None:
        self.method = full_method
        service, _, method = full_method.lstrip("/").partition("/")
        self._labels = (grpc_type, service, method)
        self._handled: dict[str, Any] = {}

    def started(self) -> None:
        STARTED.labels(*self._labels).inc()

    def handled(self, code: str, seconds: float) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = HANDLED.labels(*self._labels, code)
        counter.inc()
        HANDLING_SECONDS.labels(*self._labels).observe(seconds)


Sample = tuple[dict[str, str], float]


class _Gauges(Collector):
    """Domain gauges read at scrape time from the service's own callbacks."""

    def __init__(self) -> None:
        self._gauges: dict[str, tuple[str, tuple[str, ...], Callable[[], Iterable[Sample]]]] = {}

    def add(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...],
        read: Callable[[], Iterable[Sample]],
    ) -> None:
        self._gauges[name] = (help_text, labels, read)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (help_text, labels, read) in list(self._gauges.items()):
            family = GaugeMetricFamily(name, help_text, labels=list(labels))
            try:
                samples = list(read())
            except Exception:  # an unreachable database must not break the whole scrape
                logger.warning("gauge unreadable", extra={"fields": {"gauge": name}})
                samples = []
            for sample_labels, value in samples:
                family.add_metric([sample_labels[label] for label in labels], value)
            yield family


_GAUGES = _Gauges()
REGISTRY.register(_GAUGES)


def gauge(
    name: str,
    help_text: str,
    read: Callable[[], Iterable[Sample]],
    labels: tuple[str, ...] = (),
) -> None:
    """Registers a gauge read at scrape time: `read` returns (labels, value) pairs. No label
    names an account or a talent (the metrics port has no authentication): an `*_id` label is
    refused."""
    if any(label.endswith("_id") for label in labels):
        raise ValueError(f"{name}: metric labels carry no account or talent ids ({labels})")
    _GAUGES.add(name, help_text, labels, read)


def serve_metrics(listen: str) -> int:
    """Serves /metrics over HTTP on `host:port` (port 0 picks one); returns the port."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    return int(server.server_address[1])


def configure_tracing(service: str) -> None:
    """Installs this process's tracer provider: spans get real ids (for the logs) and are
    exported over OTLP only when an endpoint is configured."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return  # already configured (several in-process servers, as in the tests)
    provider = TracerProvider(resource=Resource.create({"service.name": f"mixip-{service}"}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def server_tracing() -> grpc.ServerInterceptor:
    """The server interceptor that continues the caller's trace (outermost, so every log line
    of the call carries its trace id)."""
    interceptor = server_interceptor()  # type: ignore[no-untyped-call]
    return cast(grpc.ServerInterceptor, interceptor)


def traced(channel: grpc.Channel) -> grpc.Channel:
    """`channel`, sending the current trace context (W3C traceparent) with every call."""
    interceptor = client_interceptor()  # type: ignore[no-untyped-call]
    return cast(grpc.Channel, intercept_channel(channel, interceptor))  # type: ignore[no-untyped-call]


_TRACER = trace.get_tracer("mixip")


@contextmanager
def step(name: str) -> Iterator[trace.Span]:
    """A span around one step of the current call, its child in the trace: `name` says the
    step (`gateway.upload.commit`). It carries no attribute, and a step that raises is marked
    an error with the exception's type only: its message (a database error's names the row's
    ids) and its traceback are not recorded, so no id reaches a trace."""
    with _TRACER.start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" outside any trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
