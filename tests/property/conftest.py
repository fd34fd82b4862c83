"""Fixtures of the bad-input properties: a harness around the `gateway` fixture that runs one
case (a call expected to be refused), checks the status is well formed, that nothing was
written to any service's database or media store, and that the gateway still serves; and a
tally of the cases run (tests/support/tally.py), printed at the end of the session."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.errors import error_details
from tests.support import tally

TIMEOUT_SECONDS = 60
OK = "OK"
_REASON = re.compile(r"[A-Z][A-Z0-9_]*")

Snapshot = dict[str, tuple[int, str]]
# Tables written by every call, refused ones too, by design (and in the background): the
# gateway's access log (tests/integration/gateway/test_access_log.py).
UNWATCHED = {"gateway.gateway_access_log"}


def _state(name: str, connection, tables) -> Snapshot:
    """Row count and a digest of the contents of every table of one service's database."""
    state = {}
    try:
        for table in tables:
            if f"{name}.{table.name}" in UNWATCHED:
                continue
            rows = sorted(repr(tuple(row)) for row in connection.execute(select(table)))
            digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
            state[f"{name}.{table.name}"] = (len(rows), digest)
    finally:
        connection.rollback()  # the next snapshot must see what was committed since
    return state


@dataclass
class Harness:
    """The gateway under test, an account on it, and the checks every case ends with."""

    gateway: object  # tests.conftest.Gateway
    backend: str
    account_id: str
    meta: tuple
    admin_meta: tuple
    connections: dict = field(default_factory=dict)  # one per database, held for the test

    @property
    def stub(self):
        return self.gateway.stub

    @property
    def admin(self):
        return self.gateway.admin

    def snapshot(self) -> Snapshot:
        """Every table of the gateway's, consent's, matcher's and audit's databases."""
        if not self.connections:
            gw = self.gateway
            for name, db in (
                ("gateway", gw.app.db),
                ("consent", gw.mesh.consent.app.db),
                ("matcher", gw.mesh.matcher.app.db),
                ("audit", gw.audit.app.db),
            ):
                self.connections[name] = (db.engine.connect(), db.metadata.sorted_tables)
        state: Snapshot = {}
        for name, (connection, tables) in self.connections.items():
            state.update(_state(name, connection, tables))
        return state

    def close(self) -> None:
        for connection, _ in self.connections.values():
            connection.close()

    def media_objects(self) -> set[str]:
        root = self.gateway.app.media_store.root
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    def assert_serving(self) -> None:
        health = health_pb2_grpc.HealthStub(self.gateway.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        verdict = self.stub.VerifyAuditLog(
            gateway_pb2.VerifyAuditLogRequest(), metadata=self.meta, timeout=TIMEOUT_SECONDS
        )
        assert verdict.ok, verdict.detail

    def case(
        self,
        rpc: str,
        call: Callable[[], object],
        *,
        allowed: Iterable[str],
        writes: Iterable[str] = (),
        on_ok: Callable[[object], None] | None = None,
        fields: Iterable[str] | None = None,
    ) -> str:
        """Runs one case and returns its outcome (a status code name or OK).

        `allowed`: the outcomes the contract permits (code names, or OK for a random input
        that happens to be valid); `writes`: the tables ("service.table") a successful call may
        change; `on_ok`: checks of a successful reply; `fields`: the field names (first path
        component) a BadRequest of this RPC may name.
        """
        allowed = set(allowed)
        before, objects_before = self.snapshot(), self.media_objects()
        outcome = "NO_ANSWER"  # the call raised something else than a status
        try:
            try:
                reply, details, outcome = call(), None, OK
            except grpc.RpcError as exc:
                reply, details = None, error_details(exc)
                outcome = details.code.name
            assert outcome in allowed, (
                f"{rpc}: expected one of {sorted(allowed)}, got {outcome}"
                + (f": {details.message!r} {details.violations}" if details else "")
            )
            if details is not None:
                _check_status(rpc, details, fields)
            elif on_ok is not None:
                on_ok(reply)
            after = self.snapshot()
            changed = {table for table in before if before[table] != after[table]}
            writable = set(writes) if details is None else set()
            assert changed <= writable, f"{rpc} ({outcome}) changed {sorted(changed - writable)}"
            assert self.media_objects() == objects_before, f"{rpc} ({outcome}) left media objects"
            self.assert_serving()
        except AssertionError:
            tally.FAILED[rpc] += 1
            raise
        finally:
            tally.TALLY[(rpc, self.backend)][outcome] += 1  # failing cases count too
        return outcome


def _check_status(rpc: str, details, fields: Iterable[str] | None) -> None:
    """A well-formed status: a message, an ErrorInfo, and for INVALID_ARGUMENT a BadRequest
    whose violations name fields of the request."""
    code = details.code.name
    assert details.message.strip(), f"{rpc}: {code} without a message"
    assert _REASON.fullmatch(details.reason), f"{rpc}: ErrorInfo reason {details.reason!r}"
    assert details.domain.endswith(".mixip"), f"{rpc}: ErrorInfo domain {details.domain!r}"
    if details.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.violations, f"{rpc}: INVALID_ARGUMENT without a field violation"
        for violation in details.violations:
            assert violation.field and violation.description, violation
            if fields is not None:
                root = re.split(r"[.\[]", violation.field, maxsplit=1)[0]
                assert root in set(fields), f"{rpc}: violation of {violation.field!r}"


@pytest.fixture
def harness(gateway, backend) -> Iterator[Harness]:
    """The gateway of this test (built once for all of a property's examples) and an account."""
    account_id, meta = gateway.new_account("property-studio")
    harness = Harness(gateway, backend, account_id, meta, gateway.admin_metadata())
    yield harness
    harness.close()
