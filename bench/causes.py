"""Where an upload's time goes over the engine's (issue 18): the milliseconds per cause, from
the services' own traces.

A `mixip up` mesh of its own (as `overhead`'s) exports its spans over OTLP to a collector in
this process (`opentelemetry-proto`'s `TraceService`, a real gRPC server). Each upload is sent
with a W3C `traceparent` of the bench's making, so its spans are found by trace id: the
gateway's `UploadMedia` server span and its step spans (`mixip.runtime.telemetry.step`:
authenticate (the key, the project and a retry's first upload, one read), receive, store,
match wait, commit and its rows), the
gateway's `MatchMedia` client span, and the matcher's server span with its own steps (decode,
analyse = detection and signatures on the engine's pool, search, consent). Raw engine calls on
the same bytes are interleaved with the uploads (ABBA), as in `overhead`.

Per upload, the causes are disjoint pieces of the client's wall time: the client↔gateway
transport (wall minus the gateway's server span), the gateway's steps, the matcher hop (the
gateway's client span minus the matcher's server span), the matcher's steps, the store's time
past the match's end (the store runs while the matcher works, so only what outlasts it is on
the path), the commit's steps (the erasure fence with the transaction's start and write lock,
the data keys, the rows with the audit events), its begin and flush (the commit minus its
steps) and what no step names (`other`).
Medians per cause; their sum is near, not equal to, the median wall. Exporting spans costs a
little CPU in every service (a batch every 100 ms): this section's walls are a little above
`overhead`'s, which runs without an exporter.
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from bench import media
from bench.mesh import RawEngine, RunningMesh
from mixip.runtime.config import free_port

SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT
METHOD = __doc__.split("\n\n", 1)[1].strip()
UPLOAD = "/mixip.gateway.v1.GatewayService/UploadMedia"
MATCH = "/mixip.matcher.v1.MatcherService/MatchMedia"
# gateway.authenticate: an upload's one read (its key, its project's scope, a retry's first
# upload), gateway/auth.py `account_and`
GATEWAY_STEPS = ("gateway.authenticate", "gateway.upload.receive")
COMMIT_STEPS = ("fence", "keys", "rows")  # gateway.upload.<step>, within gateway.upload.commit
MATCHER_STEPS = ("matcher.decode", "matcher.analyse", "matcher.search", "matcher.consent")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int  # trace_pb2.Span.SpanKind
    start: int  # ns
    end: int

    @property
    def ms(self) -> float:
        return (self.end - self.start) / 1e6


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span by trace id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.traces: dict[str, list[Span]] = defaultdict(list)

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.traces[span.trace_id.hex()].append(
                            Span(
                                service,
                                span.name,
                                span.kind,
                                span.start_time_unix_nano,
                                span.end_time_unix_nano,
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


def run(raw: RawEngine, smoke: bool) -> dict:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    images = {
        "photo_03mp_1face": media.jpeg(media.photo_03mp()),
        "photo_1080p_1face": media.jpeg(media.photo_1080p()),
        "group_4k_10faces": media.jpeg(media.group_4k()),
    }
    samples = {
        "photo_03mp_1face": 4 if smoke else 60,
        "photo_1080p_1face": 4 if smoke else 40,
        "group_4k_10faces": 2 if smoke else 20,
    }
    result: dict = {"method": METHOD}
    try:
        with RunningMesh(extra_env=env) as mesh:
            for name, data in images.items():
                result[name] = _causes(mesh, raw, collector, data, samples[name], smoke)
    finally:
        server.stop(grace=None)
    return result


def _causes(
    mesh: RunningMesh, raw: RawEngine, collector: _Collector, data: bytes, count: int, smoke: bool
) -> dict:
    for _ in range(1 if smoke else 5):  # warm-up, not kept
        raw.run(data)
        mesh.upload(data)
    walls: dict[str, float] = {}
    raw_times = []
    for i in range(count):
        for side in ("raw", "mesh") if i % 2 == 0 else ("mesh", "raw"):
            started = time.perf_counter()
            if side == "raw":
                raw.run(data)
                raw_times.append(time.perf_counter() - started)
                continue
            trace_id = secrets.token_hex(16)
            parent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
            mesh.upload(data, metadata=(("traceparent", parent),))
            walls[trace_id] = time.perf_counter() - started
    per_cause: dict[str, list[float]] = defaultdict(list)
    per_span: dict[str, list[float]] = defaultdict(list)  # every span, nested ones too
    deadline = time.monotonic() + 10  # the services export every 100 ms
    for trace_id, wall in walls.items():
        while True:
            causes = _split(collector.traces.get(trace_id, []), wall * 1000)
            if causes is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if causes is None:
            continue  # said below: `traced` counts the uploads that had all their spans
        for cause, ms in causes.items():
            per_cause[cause].append(ms)
        by_span: dict[str, float] = defaultdict(float)
        for span in collector.traces[trace_id]:
            client = " (client)" if span.kind == CLIENT else ""
            by_span[f"{span.service} {span.name}{client}"] += span.ms
        for name, ms in by_span.items():
            per_span[name].append(ms)
    raw_ms = statistics.median(raw_times) * 1000
    wall_ms = statistics.median(walls.values()) * 1000
    medians = {cause: round(statistics.median(values), 2) for cause, values in per_cause.items()}
    engine = medians.get("matcher.decode", 0) + medians.get("matcher.analyse", 0)
    engine += medians.get("matcher.search", 0)
    return {
        "uploads": count,
        "traced": len(per_cause.get("wall", [])),
        "raw_engine_ms_p50": round(raw_ms, 2),
        "mesh_wall_ms_p50": round(wall_ms, 2),
        "over_the_engine_ms": round(wall_ms - raw_ms, 2),
        "matcher_engine_steps_ms": round(engine, 2),
        "causes_ms_p50": dict(sorted(medians.items(), key=lambda item: -item[1])),
        "spans_ms_p50": {
            name: round(statistics.median(values), 2) for name, values in sorted(per_span.items())
        },
    }


def _split(spans: list[Span], wall_ms: float) -> dict[str, float] | None:
    """The disjoint causes of one upload's wall time, or None while a span is missing."""
    by_name: dict[tuple[str, bool], Span] = {}
    steps: dict[str, float] = defaultdict(float)
    for span in spans:
        if span.name in (UPLOAD, MATCH):
            by_name[(span.name, span.kind == SERVER)] = span
        else:
            steps[span.name] += span.ms
    upload, call = by_name.get((UPLOAD, True)), by_name.get((MATCH, False))
    match = by_name.get((MATCH, True))
    store = next((s for s in spans if s.name == "gateway.upload.store"), None)
    if upload is None or call is None or match is None or store is None:
        return None
    if "gateway.upload.commit" not in steps or "matcher.decode" not in steps:
        return None
    causes = {"wall": wall_ms, "client-gateway transport": wall_ms - upload.ms}
    for name in GATEWAY_STEPS + MATCHER_STEPS:
        causes[name] = steps.get(name, 0.0)
    causes["matcher hop (gateway's call - matcher's span)"] = call.ms - match.ms
    causes["matcher other"] = match.ms - sum(steps.get(n, 0.0) for n in MATCHER_STEPS)
    causes["store past the match's end"] = max(0.0, (store.end - call.end) / 1e6)
    inside = 0.0
    for part in COMMIT_STEPS:
        causes[f"commit: {part}"] = steps.get(f"gateway.upload.{part}", 0.0)
        inside += causes[f"commit: {part}"]
    causes["commit: begin and flush"] = steps["gateway.upload.commit"] - inside
    named = sum(causes[n] for n in GATEWAY_STEPS) + steps["gateway.upload.commit"]
    on_path = (call.end - call.start) / 1e6 + causes["store past the match's end"]
    causes["gateway other"] = upload.ms - named - on_path
    causes["store (while the matcher works)"] = store.ms
    causes["fsync (object + directory, within the store)"] = steps.get(
        "gateway.media_store.fsync", 0.0
    ) + steps.get("gateway.media_store.fsync_dir", 0.0)
    return causes
