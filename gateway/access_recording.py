"""How calls get into the gateway's access log (gateway/access_log.py holds what it says, its
listing and its purge): `AccessLogInterceptor` records every call to the client port
(GatewayService and AdminService; the internal port is not logged) and hands each entry to
`AccessLogWriter`.

Writing must not add a commit to every call (uploads above all): the writer's bounded queue is
written by a background thread in batches (`mixip.runtime.db.bulk_insert`: COPY on PostgreSQL)
every FLUSH_SECONDS, or at once when BATCH_SIZE entries wait. A full queue drops the new entry
rather than block the call (counted by `mixip_gateway_access_log_dropped_total`, logged once).
The queue is written out synchronously before a ListAccessLog read and before a purge (so both
see every call this replica ended before them) and when the gateway stops. A crash loses at
most the entries queued since the last write: FLUSH_SECONDS' or BATCH_SIZE entries' worth while
the database keeps up, up to QUEUE_CAPACITY while it does not. Another replica's entries are
visible once its writer has written them (within FLUSH_SECONDS).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter

from gateway.auth import CURRENT_CALL, CallNote
from gateway.store import AccessLogRow
from mixip.runtime import logs
from mixip.runtime.db import Database, bulk_insert
from mixip.runtime.handlers import Behavior, RpcKind, rewrapped
from mixip.runtime.times import Clock
from mixip.runtime.validation import ID_PATTERN
from mixip.runtime.worker import Worker

logger = logging.getLogger("mixip.gateway.access_log")  # one logger for the whole access log

QUEUE_CAPACITY = 10_000  # entries waiting to be written, at most
BATCH_SIZE = 500  # entries per write; this many waiting wakes the writer at once
FLUSH_SECONDS = 0.5  # the longest an entry waits while fewer are queued
MAX_PEER_LENGTH = 128

DROPPED = Counter(
    "mixip_gateway_access_log_dropped_total",
    "Access-log entries not recorded because the writer's queue was full.",
)


class AccessLogWriter:
    """A bounded queue of entries and the background thread that writes them in batches."""

    def __init__(
        self,
        db: Database,
        *,
        capacity: int = QUEUE_CAPACITY,
        batch_size: int = BATCH_SIZE,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.db = db
        self.capacity, self.batch_size, self.flush_seconds = capacity, batch_size, flush_seconds
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # guards _pending
        self._writing = threading.Lock()  # one writer at a time, so a flush sees its batch land
        # Every flush_seconds, or at once when a batch waits (`add` wakes it).
        self.worker = Worker(
            "gateway-access-log-writer",
            self._pass,
            poll_seconds=flush_seconds,
            wait_first=True,
            on_error=self._write_failed,
        )
        self._warned = False
        self._closed = False  # set by close(): later entries are written by their caller

    def add(self, entry: dict[str, Any]) -> None:
        """Queues an entry; never blocks (a full queue drops it, counted). After `close`, a
        call still ending (past the server's grace) writes its own entry, or counts it dropped."""
        with self._lock:
            closed = self._closed
            full = len(self._pending) >= self.capacity
            if not (closed or full):
                self._pending.append(entry)
            waiting = len(self._pending)
        if closed:
            self._write_alone(entry)
        elif full:
            DROPPED.inc()
            if not self._warned:
                self._warned = True
                logs.log(
                    logger,
                    "access log queue full: entries dropped (counted in "
                    "mixip_gateway_access_log_dropped_total)",
                    level=logging.WARNING,
                    capacity=self.capacity,
                )
        elif waiting >= self.batch_size:
            self.worker.wake()

    def flush(self) -> int:
        """Writes every entry queued before the call (after any batch being written by the
        thread has landed); returns how many it wrote. A failed write puts its batch back and
        raises."""
        written = 0
        with self._writing:
            with self._lock:
                due = len(self._pending)
            while due > 0:
                with self._lock:
                    count = min(self.batch_size, due, len(self._pending))
                    batch = [self._pending.popleft() for _ in range(count)]
                if not batch:
                    break
                try:
                    with self.db.write() as session:
                        bulk_insert(session, AccessLogRow.__table__, batch)
                except Exception:
                    with self._lock:  # oldest first again; the next flush retries them
                        self._pending.extendleft(reversed(batch))
                    raise
                written += len(batch)
                due -= len(batch)
        return written

    def waiting(self) -> int:
        with self._lock:
            return len(self._pending)

    def start(self) -> None:
        self.worker.start()

    def _pass(self) -> bool:
        self.flush()
        return False  # a flush writes all that waits: the worker waits for more

    def _write_failed(self, exc: Exception) -> None:
        """The database is away: the entries wait in the queue."""
        logs.log(
            logger,
            "access log write failed",
            level=logging.WARNING,
            error=type(exc).__name__,
            waiting=self.waiting(),
        )

    def _write_alone(self, entry: dict[str, Any]) -> None:
        """Writes one entry now (no thread is left to): on failure it is dropped, counted."""
        try:
            with self.db.write() as session:
                bulk_insert(session, AccessLogRow.__table__, [entry])
        except Exception as exc:
            DROPPED.inc()
            logs.log(
                logger,
                "access log entry lost after shutdown",
                level=logging.WARNING,
                error=type(exc).__name__,
            )

    def close(self) -> None:
        """Stops the thread and writes what is left (the server has stopped taking calls; a
        call still ending past its grace writes its own entry, `add`)."""
        self.worker.stop()
        with self._lock:  # an entry added before this is queued, and flushed just below
            self._closed = True
        try:
            self.flush()
        except Exception as exc:
            logs.log(
                logger,
                "access log entries lost at shutdown",
                level=logging.WARNING,
                error=type(exc).__name__,
                lost=self.waiting(),
            )


# A unary RPC's behaviour, and a response-streaming one's.
Handler = Callable[[Any, grpc.ServicerContext], Any]
StreamHandler = Callable[[Any, grpc.ServicerContext], Iterator[Any]]


@dataclass(frozen=True)
class _Named:
    """How to read the identifiers a unary request names (None: it names none)."""

    message: type[Message]
    project: bool
    media: bool


class AccessLogInterceptor(grpc.ServerInterceptor):
    """Records every call of the given services, of all four kinds, with its final status.

    Installed outside the mesh interceptor (`ServiceApp.interceptors`), so it sees the status
    that interceptor answered (a domain error, a bad request, a failed authentication). The
    mesh interceptor parses requests itself; for unary requests this one parses the raw bytes
    again (they are small) to read their top-level `project_id` and `media_id`. A streamed
    request's identifiers come from the servicer (`gateway.auth.note`)."""

    def __init__(
        self, writer: AccessLogWriter, clock: Clock, services: Sequence[ServiceDescriptor]
    ) -> None:
        self.writer = writer
        self.clock = clock
        self.named: dict[str, _Named | None] = {}
        for service in services:
            for method in service.methods:
                fields = method.input_type.fields_by_name
                project, media = "project_id" in fields, "media_id" in fields
                self.named[f"/{service.full_name}/{method.name}"] = (
                    _Named(message_factory.GetMessageClass(method.input_type), project, media)
                    if (project or media) and not method.client_streaming
                    else None
                )

    def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in self.named:
            return handler  # health, reflection, unknown methods: not the API's calls
        named, rpc = self.named[method], method.rsplit("/", 1)[-1]

        def wrap(behavior: Behavior, kind: RpcKind) -> Behavior:
            # a streamed request's identifiers come from the servicer (`note`)
            names = None if kind.requests_stream else named
            if kind.responses_stream:
                return self._wrap_streaming(behavior, rpc, names)
            return self._wrap(behavior, rpc, names)

        wrapped = rewrapped(
            handler,
            wrap,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return wrapped or handler  # the mesh interceptor inside refuses any other kind

    def _wrap(self, behavior: Handler, rpc: str, named: _Named | None) -> Handler:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            call = CallNote()
            token = CURRENT_CALL.set(call)
            code = "UNKNOWN"  # an exception that set no status: gRPC answers UNKNOWN
            try:
                _read_request(call, request, named)
                response = behavior(request, context)
                code = _code(context, "OK")
                return response
            except Exception:
                code = _code(context, "UNKNOWN")
                raise
            finally:
                CURRENT_CALL.reset(token)
                self._record(call, context, rpc, code)

        return wrapped

    def _wrap_streaming(
        self, behavior: StreamHandler, rpc: str, named: _Named | None
    ) -> StreamHandler:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = CallNote()
            token = CURRENT_CALL.set(call)
            code = "UNKNOWN"
            try:
                _read_request(call, request, named)
                yield from behavior(request, context)
                code = _code(context, "OK")
            except GeneratorExit:  # the client went away mid-stream
                code = "CANCELLED"
                raise
            except Exception:
                code = _code(context, "UNKNOWN")
                raise
            finally:
                # resumed in another context: nothing to restore there
                with contextlib.suppress(ValueError):
                    CURRENT_CALL.reset(token)
                self._record(call, context, rpc, code)

        return wrapped

    def _record(self, call: CallNote, context: grpc.ServicerContext, rpc: str, code: str) -> None:
        account = _identifier(call.account_id)
        self.writer.add(
            {
                "account_id": account,
                "owner_account_id": _identifier(call.owner_account_id) or account,
                "api_key_id": _identifier(call.api_key_id),
                "peer": (context.peer() or "")[:MAX_PEER_LENGTH],
                "rpc": rpc,
                "project_id": _identifier(call.project_id),
                "media_id": _identifier(call.media_id),
                "status_code": code,
                "occurred_at": self.clock(),
            }
        )


def _read_request(call: CallNote, raw: Any, named: _Named | None) -> None:
    """The project and media a unary request names (as far as it parses: a request that does
    not is answered INVALID_ARGUMENT by the mesh interceptor, and names nothing here)."""
    if named is None:
        return
    request = raw
    if isinstance(raw, bytes):  # outside the mesh interceptor, requests arrive unparsed
        try:
            request = named.message.FromString(raw)
        except (DecodeError, ValueError):
            return
    if named.project:
        call.project_id = str(getattr(request, "project_id", ""))
    if named.media:
        call.media_id = str(getattr(request, "media_id", ""))


def _identifier(value: str) -> str:
    """An identifier as recorded: a well-formed one, or nothing (a malformed value names no
    project or media, and must not put arbitrary text in the log)."""
    return value if value and ID_PATTERN.fullmatch(value) else ""


def _code(context: grpc.ServicerContext, default: str) -> str:
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else default
