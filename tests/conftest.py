"""Fixtures shared by the whole suite: databases (SQLite always, PostgreSQL when
MIXIP_TEST_DATABASE_URL is set), an injectable clock, and in-process servers on ephemeral ports."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from mixip.runtime.config import ADMIN_KEY_FILE, free_port
from mixip.runtime.db import database_url as explicit_driver
from mixip.runtime.server import RunningServer, ServiceApp, start_server
from tests.support import tally
from tests.support.databases import BACKENDS, PG_ADMIN_URL, fresh_schema_url


def pytest_generate_tests(metafunc):
    # Every test that takes `backend` runs once per database; PostgreSQL joins when configured
    # (CI always configures it), so nothing is skipped.
    chosen = any("backend" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "backend" in metafunc.fixturenames and not chosen:
        metafunc.parametrize("backend", BACKENDS)


def pytest_report_header(config):
    return f"mixip databases: {', '.join(BACKENDS)}"


def pytest_sessionfinish(session):
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # a pytest-xdist worker: its bad-input tally goes to the controller
        output["bad_input_tally"] = tally.exported()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    tally.merge(getattr(node, "workeroutput", {}).get("bad_input_tally", {}))


def pytest_terminal_summary(terminalreporter):
    if tally.TALLY:
        terminalreporter.write_sep("-", "bad-input property cases")
        tally.summary(terminalreporter.write_line)


@pytest.fixture(scope="session")
def pg_test_database():
    """A fresh PostgreSQL database for this run, dropped at the end."""
    if not PG_ADMIN_URL:
        yield None
        return
    # No pool: a test restarts the server, and the final DROP must not reuse a dead connection.
    admin = create_engine(
        explicit_driver(PG_ADMIN_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    name = f"mixip_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield explicit_driver(PG_ADMIN_URL).set(database=name)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(backend, tmp_path, pg_test_database):
    """Factory: the URL of an empty store for one service, on the test's backend. On PostgreSQL
    each store is a fresh schema of the run's database (selected through search_path)."""

    def make(service: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / (service + '.db')}"
        return fresh_schema_url(pg_test_database, service)

    return make


class FakeClock:
    """An injected clock: tests move time, nothing sleeps."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))


@pytest.fixture
def serve():
    """Starts service apps on ephemeral loopback ports; stops them and closes the apps after."""
    started: list[tuple[RunningServer, ServiceApp]] = []

    def start(app: ServiceApp, **kwargs) -> RunningServer:
        kwargs.setdefault("listen", "127.0.0.1:0")
        # Internal services in tests talk plaintext on loopback: the explicit development flag
        # (without it, or with mutual TLS, they refuse callers without a certificate).
        kwargs.setdefault("insecure_dev", True)
        try:
            running = start_server(app, **kwargs)
        except BaseException:
            app.close()
            raise
        started.append((running, app))
        return running

    yield start
    for running, app in reversed(started):
        running.stop(0)
        app.close()


class Handle:
    """A started service: its app (for direct inspection), port, and a stub on a channel."""

    def __init__(self, app, running: RunningServer, stub, channel) -> None:
        self.app, self.running, self.stub, self.channel = app, running, stub, channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@pytest.fixture
def channels():
    """Factory of client channels, closed after the test."""
    from mixip.runtime.client import open_channel

    opened = []

    def make(address: str, service_name: str):
        channel = open_channel(address, [service_name], timeout_seconds=30)
        opened.append(channel)
        return channel

    yield make
    for channel in opened:
        channel.close()


@pytest.fixture
def audit_service(database_url, tmp_path, serve, clock, channels):
    """The audit service on a fresh database with a local key file."""
    from mixip.audit.v1 import audit_pb2_grpc
    from mixip.runtime.db import Database
    from mixip.runtime.keys import LocalKeyWrapper
    from services.audit.app import SERVICE_NAME, AuditApp
    from services.audit.signer import KEY_FILE, LogSigner
    from services.audit.store import Base

    app = AuditApp(
        Database(database_url("audit"), Base.metadata),
        LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"),
        clock,
        signer=LogSigner.load_or_create(tmp_path / "log-key" / KEY_FILE),
    )
    running = serve(app)
    channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
    return Handle(app, running, audit_pb2_grpc.AuditServiceStub(channel), channel)


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake AWS credentials, and no developer profile or config file leaking in, so no test can
    reach a real account (moto and Stubber still need some credentials)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def matcher_double(serve):
    """A matcher stand-in on a real server: records deletions, can play dead."""
    from mixip.matcher.v1 import matcher_pb2_grpc
    from services.consent.app import MATCHER_SERVICE
    from tests.support.doubles import DoubleApp, MatcherDouble

    double = MatcherDouble()
    running = serve(
        DoubleApp(double, matcher_pb2_grpc.add_MatcherServiceServicer_to_server, MATCHER_SERVICE)
    )
    double.address = f"127.0.0.1:{running.port}"
    return double


@pytest.fixture
def consent_factory(database_url, serve, clock, channels, tmp_path):
    """Builds consent services on one database (replicas, restarts) against a matcher address,
    sharing one vault key directory (`tmp_path / "keys"`). Dispatch is driven by the test
    (`app.outbox.run_once()`) unless asked otherwise."""
    from mixip.consent.v1 import consent_pb2_grpc
    from mixip.runtime.client import open_channel
    from mixip.runtime.db import Database
    from mixip.runtime.keys import LocalKeyRing
    from services.consent.app import MATCHER_SERVICE, SERVICE_NAME, ConsentApp
    from services.consent.store import Base

    url = database_url("consent")

    def make(
        matcher_address: str, *, dispatch: bool = False, poll_seconds: float = 2.0, port: int = 0
    ):
        matcher_channel = open_channel(matcher_address, [MATCHER_SERVICE], timeout_seconds=2)
        app = ConsentApp(
            Database(url, Base.metadata),
            matcher_channel,
            LocalKeyRing(tmp_path / "keys" / "consent-vault.key"),
            clock,
            dispatch=dispatch,
            poll_seconds=poll_seconds,
        )
        running = serve(app, listen=f"127.0.0.1:{port}")
        channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
        return Handle(app, running, consent_pb2_grpc.ConsentServiceStub(channel), channel)

    make.url = url  # the database every service it builds shares
    return make


@pytest.fixture
def consent_service(consent_factory, matcher_double):
    return consent_factory(matcher_double.address)


class Mesh:
    """Consent and matcher wired to each other (the consent outbox reaches the real matcher)."""

    def __init__(self, consent: Handle, matcher: Handle) -> None:
        self.consent, self.matcher = consent, matcher


@pytest.fixture
def matcher_factory(database_url, serve, clock, channels, tmp_path):
    """Builds matchers on one database (replicas) against a consent address; they share one
    vault key directory (`tmp_path / "keys"`) unless the settings name another vault."""
    from dataclasses import replace

    from mixip.matcher.v1 import matcher_pb2_grpc
    from mixip.runtime.client import open_channel
    from mixip.runtime.db import Database
    from mixip.runtime.vault import VaultSettings
    from services.matcher.app import CONSENT_SERVICE, SERVICE_NAME, MatcherApp
    from services.matcher.settings import MatcherSettings
    from services.matcher.store import Base

    url = database_url("matcher")
    vault = VaultSettings(kek_file=tmp_path / "keys" / "matcher-vault.key", name="matcher")

    def make(
        consent_address: str,
        settings: MatcherSettings | None = None,
        *,
        database: str = url,  # another matcher database (an upgrade test's older one)
        **app_kwargs,
    ):
        settings = settings or MatcherSettings()
        consent_channel = open_channel(consent_address, [CONSENT_SERVICE], timeout_seconds=10)
        app = MatcherApp(
            Database(database, Base.metadata),
            consent_channel,
            settings if settings.vault else replace(settings, vault=vault),
            clock,
            **app_kwargs,
        )
        running = serve(app)
        channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
        return Handle(app, running, matcher_pb2_grpc.MatcherServiceStub(channel), channel)

    return make


@pytest.fixture
def mesh(matcher_factory, consent_factory) -> Mesh:
    """Real consent + real matcher (local engine) on the test's database backend.

    The two know each other's address before either starts, so consent's port is picked first
    and bound last; another socket can take it in between (a CI run saw that), so a lost port is
    picked again with a fresh matcher."""
    for attempt in range(5):
        consent_port = free_port()
        matcher = matcher_factory(f"127.0.0.1:{consent_port}")
        try:
            consent = consent_factory(matcher.address, port=consent_port)
        except RuntimeError as bind_failed:
            if "Failed to bind" not in str(bind_failed) or attempt == 4:
                raise
            continue
        return Mesh(consent, matcher)
    raise AssertionError("unreachable")


@pytest.fixture
def retention_factory(database_url, serve, clock, channels):
    """Builds retention replicas on one database (several schedulers, restarts) against peer
    addresses. `env` holds MIXIP_RETENTION_* settings; the scheduler is off unless the test
    turns it on. `listener` joins the replica's APScheduler before it starts, so a test can wait
    on what the scheduler does from its very first wakeup."""
    from mixip.retention.v1 import retention_pb2_grpc
    from mixip.runtime.client import open_channel
    from mixip.runtime.config import Env
    from mixip.runtime.db import Database
    from services.retention.app import (
        AUDIT_SERVICE,
        CONSENT_SERVICE,
        GATEWAY_INTERNAL_SERVICE,
        MATCHER_SERVICE,
        SERVICE_NAME,
        RetentionApp,
    )
    from services.retention.settings import RetentionSettings
    from services.retention.store import Base

    url = database_url("retention")

    def make(
        *,
        audit: str,
        matcher: str,
        consent: str,
        env: dict | None = None,
        listener=None,
        gateway: str | None = None,  # the gateway's internal address: the purge reaches it
    ):
        defaults = {"MIXIP_RETENTION_REPLICA_ID": "replica-a", "MIXIP_RETENTION_SCHEDULER": "0"}
        app = RetentionApp(
            Database(url, Base.metadata),
            RetentionSettings.load(Env({**defaults, **(env or {})})),
            open_channel(audit, [AUDIT_SERVICE], timeout_seconds=10),
            open_channel(matcher, [MATCHER_SERVICE], timeout_seconds=10),
            open_channel(consent, [CONSENT_SERVICE], timeout_seconds=10),
            clock,
            gateway_channel=open_channel(gateway, [GATEWAY_INTERNAL_SERVICE], timeout_seconds=30)
            if gateway
            else None,
        )
        if listener is not None:
            app.scheduler.apscheduler.add_listener(listener)
        running = serve(app)
        channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
        return Handle(app, running, retention_pb2_grpc.RetentionServiceStub(channel), channel)

    return make


@pytest.fixture
def retention_peers(audit_service, consent_service, matcher_double) -> dict[str, str]:
    """The addresses of a real audit, a real consent and the matcher double, as keywords of
    `retention_factory`."""
    return {
        "audit": audit_service.address,
        "matcher": matcher_double.address,
        "consent": consent_service.address,
    }


@pytest.fixture
def retention_service(retention_factory, retention_peers):
    return retention_factory(**retention_peers)


class Gateway:
    """The gateway in front of real audit, consent and matcher services (retention is
    attached when a test starts one). Stubs carry an account's key or the admin key."""

    def __init__(self, app, running, channel, mesh: Mesh, audit: Handle) -> None:
        from mixip.gateway.v1 import admin_pb2_grpc, gateway_pb2_grpc

        self.app, self.running, self.channel, self.mesh, self.audit = (
            app,
            running,
            channel,
            mesh,
            audit,
        )
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.keys: dict[str, tuple] = {}  # account id -> call metadata (new_account)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def admin_metadata(self):
        return (("authorization", f"Bearer {self.app.admin_key}"),)

    def new_account(self, name: str = "studio") -> tuple[str, tuple]:
        """(account id, call metadata with its fresh API key)."""
        from mixip.gateway.v1 import admin_pb2

        reply = self.admin.CreateAccount(
            admin_pb2.CreateAccountRequest(name=name), metadata=self.admin_metadata()
        )
        meta = (("authorization", f"Bearer {reply.api_key}"),)
        self.keys[reply.account.account_id] = meta  # tests act as any account they made
        return reply.account.account_id, meta


@pytest.fixture
def gateway_overrides() -> dict:
    """GatewaySettings fields a test module sets for its `gateway` (e.g. webhooks to loopback)."""
    return {}


@pytest.fixture
def gateway_media_store(tmp_path):
    """The `gateway` fixture's media store: the encrypted directory, with segments small enough
    that a test's photo spans several (as a long video does). A test module may override it."""
    from gateway.media_store import LocalEncryptedStore
    from mixip.runtime.keys import LocalKeyWrapper

    return LocalEncryptedStore(
        tmp_path / "media", LocalKeyWrapper(tmp_path / "keys" / "gw.key"), segment_bytes=64 * 1024
    )


@pytest.fixture
def gateway(
    database_url,
    serve,
    clock,
    channels,
    tmp_path,
    mesh,
    audit_service,
    gateway_overrides,
    gateway_media_store,
):
    from gateway.app import (
        ADMIN_SERVICE,
        GATEWAY_SERVICE,
        PEER_SERVICES,
        GatewayApp,
        GatewaySettings,
    )
    from gateway.store import Base
    from mixip.runtime.client import open_channel
    from mixip.runtime.db import Database
    from tests.support.gateway_calls import gateway_vault

    addresses = {
        "matcher": mesh.matcher.address,
        "consent": mesh.consent.address,
        "audit": audit_service.address,
        "retention": f"127.0.0.1:{free_port()}",
    }
    peer_channels = {
        name: open_channel(addresses[name], [service], timeout_seconds=30)
        for name, service in PEER_SERVICES.items()
    }
    app = GatewayApp(
        Database(database_url("gateway"), Base.metadata),
        peer_channels,
        gateway_media_store,
        GatewaySettings(
            max_upload_bytes=8 * 1024 * 1024,
            max_chunk_bytes=256 * 1024,
            admin_key_file=tmp_path / ADMIN_KEY_FILE,
            vault=gateway_vault(tmp_path),
            **gateway_overrides,
        ),
        clock,
        internal_insecure_dev=True,
    )
    running = serve(app)
    channel = open_channel(
        f"127.0.0.1:{running.port}", [GATEWAY_SERVICE, ADMIN_SERVICE], timeout_seconds=60
    )
    yield Gateway(app, running, channel, mesh, audit_service)
    channel.close()
