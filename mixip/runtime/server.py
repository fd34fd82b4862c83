"""gRPC server bootstrap shared by every service (grpc's own examples/python are the model).

`start_server` builds a server with health and reflection, the mesh interceptor (request id,
one structured log line per call, caller rules, domain errors mapped to status with details) and
request-size limits per method, checked on the raw bytes before a request is parsed. `serve`
runs a service as a process until SIGTERM/SIGINT, then drains it: health NOT_SERVING first,
then `server.stop(grace)`. A process holds its instance's lock on the data directory
(mixip.runtime.statelock) from before it touches any state until it exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.exc import DBAPIError, OperationalError

from mixip.runtime import logs, statelock, telemetry
from mixip.runtime.addresses import is_loopback
from mixip.runtime.config import ADMIN_KEY_FILE, ConfigError, Env, ServerConfig
from mixip.runtime.errors import (
    Cancelled,
    DeadlineExceeded,
    DependencyUnavailable,
    Internal,
    InvalidArgument,
    MeshError,
    ResourceExhausted,
    Unavailable,
    to_grpc_status,
)
from mixip.runtime.handlers import Behavior, RpcKind, rewrapped
from mixip.runtime.limits import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES
from mixip.runtime.supervision import die_with_supervisor
from mixip.runtime.telemetry import RpcMetrics

logger = logging.getLogger("mixip.server")

REQUEST_ID_HEADER = "x-request-id"
# MIXIP_INSTANCE: this process's name among the instances of its data directory (`matcher`,
# `matcher-2`), which names its lock; the service's name by default.
INSTANCE_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")

# Authorizer: given the full method name and the call context, raises PermissionDenied (or
# returns the caller's identity for the log line).
Authorizer = Callable[[str, grpc.ServicerContext], str]
# A unary RPC's behaviour: (request, context) -> response.
Handler = Callable[[Any, grpc.ServicerContext], Any]


class ServiceApp:
    """What a service hands to the bootstrap: its servicers, and background work if any."""

    name: str = ""
    # False for the mesh's internal services: they serve only callers identified by mutual TLS
    # (mixip.runtime.acl). True for the gateway, whose clients present API keys instead.
    client_facing: bool = False

    def register(self, server: grpc.Server) -> Sequence[str]:
        """Adds the servicers; returns the full names of the services added."""
        raise NotImplementedError

    def request_limits(self) -> Mapping[str, int]:
        """The methods (full names) whose requests may be larger than the server's default
        request limit (MIXIP_MAX_REQUEST_BYTES), and their limits: none by default."""
        return {}

    def interceptors(self) -> Sequence[grpc.ServerInterceptor]:
        """The service's own interceptors, run outside the mesh interceptor (so they see the
        status it answers); none by default."""
        return ()

    def start(self) -> None:
        """Starts background work (dispatchers, schedulers) once the server is up."""

    def ready(self) -> bool:
        """Whether the service can do its work now (health answers NOT_SERVING otherwise):
        by default, whether its database answers."""
        db = getattr(self, "db", None)
        return db is None or db.ping()

    def close(self) -> None:
        """Stops background work and releases resources."""


class MeshInterceptor(grpc.ServerInterceptor):
    """Request id, structured log line, caller authorization, request-size limit and error
    mapping for every RPC.

    It wraps all four kinds of RPC (unary or streaming requests and responses) and fails
    closed: a handler of any other shape is answered UNIMPLEMENTED, never served unchecked.
    Every request's size is measured before anything parses it (`_measured`), health and
    reflection included."""

    def __init__(
        self,
        domain: str,
        authorize: Authorizer | None = None,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        request_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.domain = domain
        self.authorize = authorize
        self.max_request_bytes = max_request_bytes
        self.request_limits = dict(request_limits or {})

    def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return None
        limit = self.request_limits.get(method, self.max_request_bytes)
        if method.startswith("/grpc."):
            return _health_or_reflection(handler, method, limit)  # no caller rules nor log line
        # Requests are parsed inside the wrapper (gRPC would otherwise answer bytes that do not
        # parse with a bare INTERNAL before any interceptor code runs); gRPC's own deserializer
        # only measures them.
        parse = handler.request_deserializer

        def wrap(behavior: Behavior, kind: RpcKind) -> Behavior:
            metrics = RpcMetrics(method, kind.grpc_type)
            parsed = _parsing(behavior, kind, lambda raw, context: _parsed(parse, raw))
            if kind.responses_stream:
                return self._wrap_streaming(parsed, metrics)
            return self._wrap(parsed, metrics)

        wrapped = rewrapped(
            handler,
            wrap,
            request_deserializer=_measured(limit),
            response_serializer=handler.response_serializer,
        )
        return wrapped or grpc.unary_unary_rpc_method_handler(_refuse_unknown_kind(method))

    def _wrap(self, behavior: Handler, metrics: RpcMetrics) -> Handler:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(self, metrics, context)
            try:
                call.authorize()
                return behavior(request, context)
            except Exception as exc:
                call.failed(exc)
            finally:
                call.end()
            assert call.failure is not None  # failed() either set it or raised
            context.abort_with_status(to_grpc_status(call.failure, self.domain))

        return wrapped

    def _wrap_streaming(
        self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], metrics: RpcMetrics
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        """The same checks for an RPC that streams its responses: authorization before the
        first response, and an error raised while streaming mapped like any other."""

        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(self, metrics, context)
            try:
                call.authorize()
                yield from behavior(request, context)
            except GeneratorExit:  # the client went away: nothing to answer
                raise
            except Exception as exc:
                call.failed(exc)
            finally:
                call.end()
            if call.failure is not None:
                context.abort_with_status(to_grpc_status(call.failure, self.domain))

        return wrapped


class _Call:
    """One RPC as the interceptor sees it: its request id, caller, failure and log line."""

    def __init__(
        self, interceptor: MeshInterceptor, metrics: RpcMetrics, context: grpc.ServicerContext
    ) -> None:
        self.interceptor, self.method, self.context = interceptor, metrics.method, context
        self.metrics = metrics
        metrics.started()
        sent = dict(context.invocation_metadata()).get(REQUEST_ID_HEADER, "")
        incoming = sent if isinstance(sent, str) else ""
        self.request_id = incoming[:64] if incoming.isprintable() and incoming else uuid.uuid4().hex
        self.token = logs.REQUEST_ID.set(self.request_id)
        self.started = time.perf_counter()
        self.caller = ""
        self.failure: MeshError | None = None

    def authorize(self) -> None:
        if self.interceptor.authorize is not None:
            self.caller = self.interceptor.authorize(self.method, self.context)

    def failed(self, exc: Exception) -> None:
        """Maps `exc` to the status to answer; re-raises when the servicer already aborted
        (or a dependency's own status is passed through)."""
        context, request_id = self.context, self.request_id
        if not context.is_active() and _from_going_away(exc):
            # the caller cancelled, or its deadline passed: nobody hears an answer, and what
            # failed did so because the caller left (anything else is still an error below)
            remaining = context.time_remaining()
            gone = DeadlineExceeded if remaining is not None and remaining <= 0 else Cancelled
            self.failure = gone("the caller went away; nobody hears an answer")
            return
        if isinstance(exc, MeshError):
            self.failure = exc
        elif isinstance(exc, grpc.RpcError):  # a call to another service failed
            self.failure = _dependency_failure(exc)
            if self.failure is None:
                _passthrough(context, exc)
        elif isinstance(exc, (OperationalError, DBAPIError)):
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                logger.warning("database unavailable", exc_info=exc)
                self.failure = Unavailable(
                    "database unavailable; retry", reason="DATABASE_UNAVAILABLE"
                )
            else:
                logger.error("database error", exc_info=exc)
                self.failure = Internal(f"internal error (request id {request_id})")
        else:
            if _aborted(context):
                raise exc
            logger.error("unhandled error", exc_info=exc)
            self.failure = Internal(f"internal error (request id {request_id})")

    def end(self) -> None:
        failure = self.failure
        code = failure.code.name if failure else _code_name(self.context)
        seconds = time.perf_counter() - self.started
        self.metrics.handled(code, seconds)
        fields: dict[str, Any] = {}
        if self.caller:
            fields["caller"] = self.caller
        if failure:
            fields["reason"] = failure.reason
        logs.log(
            logger, "rpc", method=self.method, code=code, ms=round(seconds * 1000, 1), **fields
        )
        # A streaming RPC resumed in another context has nothing to restore there.
        with contextlib.suppress(ValueError):
            logs.REQUEST_ID.reset(self.token)


def _refuse_unknown_kind(method: str) -> Handler:
    def refuse(request: Any, context: grpc.ServicerContext) -> None:
        logger.error("rpc kind not wrapped", extra={"fields": {"method": method}})
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{method}: this kind of RPC is not served (the mesh interceptor does not wrap it)",
        )

    return refuse


class TooLarge:
    """What gRPC hands the handler instead of a request over its method's limit: the size only
    (the bytes are dropped unparsed). A deserializer that raised would be answered INTERNAL."""

    __slots__ = ("limit", "size")

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit

    def error(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"request of {self.size} bytes; this method accepts at most {self.limit}",
            reason="REQUEST_TOO_LARGE",
        )


def _measured(limit: int) -> Callable[[bytes], bytes | TooLarge]:
    """The deserializer gRPC runs on a request's raw bytes: they pass on unparsed if they are
    within `limit`, else only their size does."""

    def measure(raw: bytes) -> bytes | TooLarge:
        return raw if len(raw) <= limit else TooLarge(len(raw), limit)

    return measure


def _health_or_reflection(handler: Any, method: str, limit: int) -> Any:
    """Health and reflection served as they are, after the same size check."""
    parse = handler.request_deserializer

    def admit(raw: bytes | TooLarge, context: grpc.ServicerContext) -> Any:
        if isinstance(raw, TooLarge):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, raw.error().message)
        return parse(raw) if parse else raw

    wrapped = rewrapped(
        handler,
        lambda behavior, kind: _parsing(behavior, kind, admit),
        request_deserializer=_measured(limit),
        response_serializer=handler.response_serializer,
    )
    return wrapped or grpc.unary_unary_rpc_method_handler(_refuse_unknown_kind(method))


def _parsing(
    behavior: Behavior, kind: RpcKind, parse: Callable[[Any, grpc.ServicerContext], Any]
) -> Behavior:
    """`behavior` taking raw requests: each is `parse`d (one, or each of a stream) first."""
    if kind.requests_stream:
        return lambda raws, context: behavior((parse(r, context) for r in raws), context)
    return lambda raw, context: behavior(parse(raw, context), context)


def _parsed(parse: Callable[[bytes], Any], raw: bytes | TooLarge) -> Any:
    if isinstance(raw, TooLarge):
        raise raw.error()
    try:
        return parse(raw)
    except Exception as exc:  # protobuf's DecodeError, or invalid UTF-8 in a string field
        raise InvalidArgument.one(
            "request", "not a valid message of this RPC's request type", reason="MALFORMED_REQUEST"
        ) from exc


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def _aborted(context: grpc.ServicerContext) -> bool:
    code = context.code() if hasattr(context, "code") else None
    return code not in (None, grpc.StatusCode.OK)


def _from_going_away(exc: Exception) -> bool:
    """Whether `exc` is what a call meets when its caller leaves: the request stream's bare
    RpcError, a call of its own cancelled or out of time with it, or a refusal of the service's
    (a stream that ended early is one)."""
    if isinstance(exc, MeshError):
        return True
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        return code in (None, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
    return False


def _dependency_failure(exc: grpc.RpcError) -> MeshError | None:
    """UNAVAILABLE for an unreachable dependency; None to pass its status through unchanged."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        logger.warning("dependency unavailable", extra={"fields": {"code": code.name}})
        return DependencyUnavailable("a service this call depends on is unavailable; retry")
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED):
        logger.error("dependency failed", extra={"fields": {"code": code.name}})
        return Internal(f"internal error (request id {logs.REQUEST_ID.get()})")
    return None


def _passthrough(context: grpc.ServicerContext, exc: grpc.RpcError) -> None:
    """Returns a dependency's own status (e.g. its INVALID_ARGUMENT with field details)."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(exc)
    if status is not None:
        context.abort_with_status(rpc_status.to_status(status))
    context.abort(exc.code(), exc.details() or "")


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    names: list[str]
    _stopping: threading.Event = field(default_factory=threading.Event)

    def watch(self, app: ServiceApp, every_seconds: float) -> None:
        """Health follows `app.ready()`: SERVING now if ready, then re-checked every
        `every_seconds` (NOT_SERVING while the database is unreachable, SERVING again after)."""
        self._set(app.ready())
        threading.Thread(
            target=self._probe, args=(app, every_seconds), name="health-probe", daemon=True
        ).start()

    def _probe(self, app: ServiceApp, every_seconds: float) -> None:
        serving = None
        while not self._stopping.wait(every_seconds):
            ready = app.ready()
            if ready != serving:
                self._set(ready)
                serving = ready

    def _set(self, ready: bool) -> None:
        if self._stopping.is_set():
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.names:
            self.health.set(name, status)

    def stop(self, grace: float = 1.0) -> None:
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


# Accepts the clients' keepalive pings (mixip.runtime.client.KEEPALIVE_OPTIONS), and closes
# every connection after a few minutes (gracefully: open calls finish) so clients resolve
# their targets again and spread over replicas added since they connected.
KEEPALIVE_POLICY = [
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 900_000),
]


def start_server(
    app: ServiceApp,
    *,
    listen: str = "127.0.0.1:0",
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    workers: int = 16,
    credentials: grpc.ServerCredentials | None = None,
    authorize: Authorizer | None = None,
    health_probe_seconds: float = 2.0,
    insecure_dev: bool = False,
) -> RunningServer:
    """Builds, binds and starts a server for `app`; `listen` may use port 0 (see `.port`).

    A request is refused (RESOURCE_EXHAUSTED) before it is parsed when it is larger than its
    method's limit: `max_request_bytes`, or the larger one `app.request_limits()` declares. gRPC
    itself refuses anything larger than the largest of them before handing it to Python;
    `max_message_bytes` bounds the responses sent.

    An internal service (not `app.client_facing`) fails closed: unless `authorize` is given,
    every call needs a caller identified by mutual TLS and allowed by `mixip.runtime.acl`, so
    a plaintext port refuses every call (UNAUTHENTICATED). Only `insecure_dev`, the explicit
    development flag, serves plaintext callers, and only on a loopback address."""
    if not app.client_facing and authorize is None:
        from mixip.runtime import acl

        authorize = acl.authorize
        if credentials is None and insecure_dev:
            if not is_loopback(listen):
                raise ConfigError(
                    f"the insecure development mode serves plaintext on loopback only, not "
                    f"on {listen}: use mutual TLS (MIXIP_TLS_DIR)"
                )
            authorize = acl.development
    telemetry.configure_tracing(app.name)
    request_limits = app.request_limits()
    mesh = MeshInterceptor(
        f"{app.name}.mixip",
        authorize,
        max_request_bytes=max_request_bytes,
        request_limits=request_limits,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{app.name}-rpc"),
        interceptors=[telemetry.server_tracing(), *app.interceptors(), mesh],
        options=[
            (
                "grpc.max_receive_message_length",
                max([max_request_bytes, *request_limits.values()]),
            ),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            *KEEPALIVE_POLICY,
        ],
    )
    names = list(app.register(server))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise ConfigError(f"cannot listen on {listen} (address in use or invalid)")
    server.start()
    running = RunningServer(server, port, health_servicer, ["", *names])
    running.watch(app, health_probe_seconds)
    app.start()
    return running


def serve(
    name: str, build: Callable[[ServerConfig, Env], tuple[ServiceApp, dict[str, Any]]]
) -> int:
    """Runs service `name` as a process until SIGTERM/SIGINT. `build` returns the app and the
    keyword arguments of `start_server` beyond the common ones (credentials, authorize); by
    default, with MIXIP_TLS_DIR set, the service requires mutual TLS and checks its callers
    against `mixip.runtime.acl`."""
    os.umask(0o077)  # every file this service creates (databases, logs, keys, media): 0600
    env = Env()
    stop = threading.Event()
    die_with_supervisor()  # `mixip up`'s services stop with it, even after a SIGKILL
    for signum in (signal.SIGTERM, signal.SIGINT):  # before start-up, so it drains too
        signal.signal(signum, lambda *_: stop.set())
    try:
        logs.configure()
        config = ServerConfig.load(name, env)
        instance = env.str("MIXIP_INSTANCE", name)
        if not INSTANCE_NAME.fullmatch(instance):
            raise ConfigError(f"MIXIP_INSTANCE={instance!r} must be a name like {name}-2")
        lock = statelock.acquire(config.data_dir, instance)  # held until this process ends
        for legacy in ("keys", ADMIN_KEY_FILE):  # what it would otherwise make anew
            if (config.data_dir / legacy).exists():
                raise ConfigError(
                    f"key material in {config.data_dir / legacy}: keys live in the key "
                    f"directory now (MIXIP_KEY_DIR, here {config.key_dir}); move it there "
                    "(`mixip up` does it once)"
                )
        insecure_dev = env.bool("MIXIP_INSECURE_DEV", False)
        app, extra = build(config, env)
        if config.tls_dir is not None and "credentials" not in extra:
            from mixip.runtime import acl, tls

            extra = {
                "credentials": tls.server_credentials(config.tls_dir, name),
                "authorize": acl.authorize,
            }
        if not app.client_facing and not extra.get("credentials") and not insecure_dev:
            raise ConfigError(
                f"refusing to serve {name} without mutual TLS: set MIXIP_TLS_DIR (see `mixip "
                "certs init`); for development on loopback only, MIXIP_INSECURE_DEV=true "
                "(`mixip up --insecure`) accepts any local caller"
            )
        if (
            not extra.get("credentials")
            and not is_loopback(config.listen)
            and not env.bool("MIXIP_ALLOW_PLAINTEXT", False)
        ):
            raise ConfigError(
                f"refusing to listen on {config.listen} without TLS: set MIXIP_TLS_DIR (or, "
                "for the gateway, MIXIP_GATEWAY_TLS_CERT/KEY); MIXIP_ALLOW_PLAINTEXT=true only "
                "behind a proxy that terminates TLS"
            )
        if insecure_dev and not extra.get("credentials"):
            logs.log(
                logger,
                "INSECURE development mode: plaintext, any local caller accepted",
                level=logging.WARNING,
                service=name,
            )
        running = start_server(
            app,
            listen=config.listen,
            max_message_bytes=config.max_message_bytes,
            max_request_bytes=config.max_request_bytes,
            workers=config.workers,
            insecure_dev=insecure_dev,
            **extra,
        )
    except ConfigError as exc:
        print(f"mixip {name}: {exc}", file=sys.stderr)
        return 2
    except statelock.StateInUse as exc:
        print(f"mixip {name}: {exc}; stop it first", file=sys.stderr)
        return 1
    metrics_port = telemetry.serve_metrics(config.metrics_listen) if config.metrics_listen else 0
    logs.log(
        logger,
        "serving",
        service=name,
        port=running.port,
        tls=bool(extra.get("credentials")),
        **({"metrics_port": metrics_port} if metrics_port else {}),
    )
    stop.wait()
    logs.log(logger, "stopping", service=name)
    running.stop(config.grace_seconds)
    app.close()
    logs.log(logger, "stopped", service=name)
    lock.release()
    return 0
