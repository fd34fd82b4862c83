"""Fixtures shared by the whole suite: databases (SQLite always, PostgreSQL when
MIXIP_TEST_DATABASE_URL is set), an injectable clock, and in-process servers on ephemeral ports."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from mixip.runtime.db import database_url as explicit_driver
from mixip.runtime.server import RunningServer, ServiceApp, start_server

PG_ADMIN_URL = os.environ.get("MIXIP_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", "postgresql"] if PG_ADMIN_URL else ["sqlite"]


def pytest_generate_tests(metafunc):
    # Every test that takes `backend` runs once per database; PostgreSQL joins when configured
    # (CI always configures it), so nothing is skipped.
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS)


def pytest_report_header(config):
    return f"mixip databases: {', '.join(BACKENDS)}"


@pytest.fixture(scope="session")
def pg_test_database():
    """A fresh PostgreSQL database for this run, dropped at the end."""
    if not PG_ADMIN_URL:
        yield None
        return
    admin = create_engine(explicit_driver(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
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
        schema = f"{service}_{uuid.uuid4().hex[:10]}"
        engine = create_engine(pg_test_database)
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        url = pg_test_database.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

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
        running = start_server(app, **kwargs)
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
    from services.audit.store import Base

    app = AuditApp(
        Database(database_url("audit"), Base.metadata),
        LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"),
        clock,
    )
    running = serve(app)
    channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
    return Handle(app, running, audit_pb2_grpc.AuditServiceStub(channel), channel)


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake AWS credentials so no test can reach a real account (moto and Stubber need some)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)


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
def consent_factory(database_url, serve, clock, channels):
    """Builds consent services on one database (replicas, restarts) against a matcher address.
    Dispatch is driven by the test (`app.outbox.run_once()`) unless asked otherwise."""
    from mixip.consent.v1 import consent_pb2_grpc
    from mixip.runtime.client import open_channel
    from mixip.runtime.db import Database
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
            clock,
            dispatch=dispatch,
            poll_seconds=poll_seconds,
        )
        running = serve(app, listen=f"127.0.0.1:{port}")
        channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
        return Handle(app, running, consent_pb2_grpc.ConsentServiceStub(channel), channel)

    return make


@pytest.fixture
def consent_service(consent_factory, matcher_double):
    return consent_factory(matcher_double.address)


def free_port() -> int:
    """A loopback port nothing listens on (for peers that must know each other's address)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mesh:
    """Consent and matcher wired to each other (the consent outbox reaches the real matcher)."""

    def __init__(self, consent: Handle, matcher: Handle) -> None:
        self.consent, self.matcher = consent, matcher


@pytest.fixture
def matcher_factory(database_url, serve, clock, channels):
    """Builds matchers on one database (replicas) against a consent address."""
    from mixip.matcher.v1 import matcher_pb2_grpc
    from mixip.runtime.client import open_channel
    from mixip.runtime.db import Database
    from services.matcher.app import CONSENT_SERVICE, SERVICE_NAME, MatcherApp, MatcherSettings
    from services.matcher.store import Base

    url = database_url("matcher")

    def make(consent_address: str, settings: MatcherSettings | None = None, **app_kwargs):
        consent_channel = open_channel(consent_address, [CONSENT_SERVICE], timeout_seconds=10)
        app = MatcherApp(
            Database(url, Base.metadata),
            consent_channel,
            settings or MatcherSettings(),
            clock,
            **app_kwargs,
        )
        running = serve(app)
        channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
        return Handle(app, running, matcher_pb2_grpc.MatcherServiceStub(channel), channel)

    return make


@pytest.fixture
def mesh(matcher_factory, consent_factory) -> Mesh:
    """Real consent + real matcher (local engine) on the test's database backend."""
    consent_port = free_port()
    matcher = matcher_factory(f"127.0.0.1:{consent_port}")
    consent = consent_factory(matcher.address, port=consent_port)
    return Mesh(consent, matcher)
