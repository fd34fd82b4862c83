"""`mixip up`'s supervisor with real processes: the audit service is killed under upload load,
restarted by the supervisor with no one's help, and uploads succeed again within 10 s. Every
result the gateway stored has its audit events."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from sqlalchemy import create_engine, text

from mixip.cli.dev_mesh import ensure_dev_account
from mixip.cli.launcher import FIRST_BACKOFF, Mesh
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.config import SERVICES, variable
from mixip.runtime.connection import Connection
from mixip.runtime.db import database_url
from mixip.runtime.times import utcnow
from tests.support import faces
from tests.support.databases import fresh_schema_url
from tests.support.gateway_calls import consent, enroll, upload_requests

pytestmark = pytest.mark.slow

WORKERS = 2
RECOVERY_SECONDS = 10.0


@pytest.fixture
def mesh(tmp_path, backend, pg_test_database):
    env = {}
    if backend == "postgresql":
        env = {variable(s, "DATABASE_URL"): fresh_schema_url(pg_test_database, s) for s in SERVICES}
    mesh = Mesh(tmp_path / "data", extra_env=env)
    mesh.start()
    stop = threading.Event()
    said: list[str] = []
    supervisor = threading.Thread(target=mesh.supervise, args=(stop, said.append), daemon=True)
    supervisor.start()
    yield mesh, said
    stop.set()
    supervisor.join(10)
    mesh.stop()


def test_a_killed_audit_service_is_restarted_and_uploads_resume_within_10_s(mesh):
    mesh, said = mesh
    conn = Connection(mesh.data_dir, mesh.addresses["gateway"])
    ensure_dev_account(conn)
    stub, meta = conn.gateway()
    calls = type("Calls", (), {"stub": stub})()
    consent(calls, meta, utcnow, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(calls, meta, utcnow, "astronaut", cpb.CONSENT_SCOPE_FACE_USAGE, project="p1")
    enroll(calls, meta, "astronaut", faces.astronaut())
    photo = faces.encode(faces.astronaut())

    killed_at: list[float] = []
    successes: list[tuple[float, str]] = []  # (finished at, media id)
    failures: list[grpc.StatusCode] = []
    enough = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        """Uploads in a bounded loop; a failed upload is retried with its request id."""
        deadline = time.monotonic() + 90
        n = 0
        while not enough.is_set() and time.monotonic() < deadline:
            request_id = f"w{worker}-{n}"
            try:
                reply = stub.UploadMedia(
                    upload_requests(photo, project="p1", request_id=request_id),
                    metadata=meta,
                    timeout=30,
                )
            except grpc.RpcError as exc:
                with lock:
                    failures.append(exc.code())
                continue  # the same request id again (the channel's retry policy backs off)
            assert [f.talent_id for f in reply.faces] == ["astronaut"]
            n += 1
            with lock:
                successes.append((time.monotonic(), reply.media_id))
                if len(successes) == 2 * WORKERS and not killed_at:
                    killed_at.append(time.monotonic())
                    mesh.processes["audit"].kill()  # SIGKILL, mid-load
                after = [t for t, _ in successes if killed_at and t > killed_at[0]]
                # Uploads go on while audit is down (their events wait in the gateway's
                # outbox): the load lasts until the supervisor has restarted it too.
                restarted = any(line.startswith("audit restarted") for line in said)
                if len(after) >= 2 * WORKERS and restarted:
                    enough.set()

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(load, range(WORKERS)))

    assert killed_at, "the load never reached the kill"
    resumed = [t for t, _ in successes if t > killed_at[0]]
    assert len(resumed) >= 2 * WORKERS
    assert resumed[0] - killed_at[0] <= RECOVERY_SECONDS
    assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}
    assert any("audit exited with code -9" in s and f"in {FIRST_BACKOFF:g} s" in s for s in said)
    assert any(s.startswith("audit restarted") for s in said)

    # Every result the gateway stored (read from its own database) has one audit event per face.
    url = mesh.extra_env.get(variable("gateway", "DATABASE_URL")) or (
        f"sqlite:///{mesh.data_dir / 'gateway.db'}"
    )
    engine = create_engine(database_url(url))
    with engine.connect() as connection:
        stored = {
            (media_id, face_index)
            for media_id, face_index in connection.execute(
                text("SELECT media_id, face_index FROM gateway_media_faces")
            )
        }
    engine.dispose()
    assert {m for m, _ in stored} >= {m for _, m in successes}
    # The gateway's channel to the restarted audit service reconnects within its reconnect
    # backoff (at most 5 s): until then a read through the gateway is UNAVAILABLE, answered
    # once (no retry at every hop), and a client retries it as UNAVAILABLE asks.
    listed = _retrying(
        lambda: stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000), metadata=meta)
    )
    audited = {(e.media_id, e.face_index) for e in listed.events if e.media_id}
    assert stored - audited == set()
    assert _retrying(lambda: stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta)).ok


def _retrying(call):
    """`call()`, again after UNAVAILABLE for up to RECOVERY_SECONDS (what a client does)."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
