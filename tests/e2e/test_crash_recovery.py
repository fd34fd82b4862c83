"""Failure guarantees with real processes (`mixip up`'s launcher): a SIGKILL mid-request and a
PostgreSQL restart while the mesh runs. Nothing lost, nothing duplicated, nothing corrupt."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import grpc
import pytest

from mixip.cli.dev_mesh import ensure_dev_account
from mixip.cli.launcher import Mesh
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.config import SERVICES, variable
from mixip.runtime.connection import Connection
from mixip.runtime.times import utcnow
from tests.support import faces
from tests.support.databases import BACKENDS, fresh_schema_url
from tests.support.gateway_calls import consent, enroll, upload_requests

pytestmark = pytest.mark.slow


@pytest.fixture
def mesh(tmp_path, backend, pg_test_database):
    env = {}
    if backend == "postgresql":
        env = {variable(s, "DATABASE_URL"): fresh_schema_url(pg_test_database, s) for s in SERVICES}
    mesh = Mesh(tmp_path / "data", extra_env=env)
    mesh.start()
    yield mesh
    mesh.stop()


@pytest.fixture
def client(mesh):
    conn = Connection(mesh.data_dir, mesh.addresses["gateway"])
    ensure_dev_account(conn)
    stub, meta = conn.gateway()
    calls = type("Calls", (), {"stub": stub})()  # what tests.support.gateway_calls expects
    consent(calls, meta, utcnow, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(calls, meta, utcnow, "astronaut", cpb.CONSENT_SCOPE_FACE_USAGE, project="p1")
    enroll(calls, meta, "astronaut", faces.astronaut())
    return stub, meta


def _events_of(stub, meta, media_id):
    events = stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000), metadata=meta)
    return [e for e in events.events if e.media_id == media_id]


def test_a_gateway_killed_mid_upload_is_finished_by_an_idempotent_retry(mesh, client):
    stub, meta = client
    video = faces.make_video(None, [(faces.astronaut(), 3.0), (faces.grace_hopper(), 3.0)])
    sent = threading.Event()

    def requests():
        yield from upload_requests(video, project="p1", request_id="upload-1", chunk=32 * 1024)
        sent.set()

    call = stub.UploadMedia.future(requests(), metadata=meta)
    assert sent.wait(30)
    mesh.processes["gateway"].kill()  # SIGKILL while the matcher works on the upload
    with pytest.raises(grpc.RpcError):
        call.result()
    mesh.restart("gateway")

    reply = stub.UploadMedia(
        upload_requests(video, project="p1", request_id="upload-1"),
        metadata=meta,
        wait_for_ready=True,
    )
    assert len(reply.faces) == 2
    again = stub.UploadMedia(
        upload_requests(video, project="p1", request_id="upload-1"), metadata=meta
    )
    assert again.media_id == reply.media_id
    events = _events_of(stub, meta, reply.media_id)
    assert sorted(e.face_index for e in events) == [0, 1]  # one per face, never twice
    assert stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok


def test_an_audit_service_killed_and_restarted_loses_nothing(mesh, client):
    """The upload succeeds while audit is down (its events are queued in its commit); they are
    delivered once audit is back, each once."""
    stub, meta = client
    mesh.processes["audit"].kill()
    photo = faces.encode(faces.composite(faces.astronaut(), faces.grace_hopper()))
    reply = stub.UploadMedia(upload_requests(photo, project="p1", request_id="up-2"), metadata=meta)
    assert len(reply.faces) == 2
    mesh.restart("audit")
    again = stub.UploadMedia(
        upload_requests(photo, project="p1", request_id="up-2"), metadata=meta, wait_for_ready=True
    )
    assert again.media_id == reply.media_id
    assert sorted(e.face_index for e in _events_of(stub, meta, reply.media_id)) == [0, 1]
    assert stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok


def _pg_restart() -> None:
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        [
            shutil.which("pg_ctlcluster") or "/usr/bin/pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            "main",
            "restart",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


# Only with PostgreSQL configured (CI always configures it): a restart of the real server.
@pytest.mark.alone  # it restarts the PostgreSQL server every other test uses
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_services_reconnect_after_a_postgresql_restart(mesh, client, backend):
    stub, meta = client
    photo = faces.encode(faces.astronaut())
    first = stub.UploadMedia(upload_requests(photo, project="p1"), metadata=meta)
    _pg_restart()
    # every service's pool holds dead connections now: the next calls must simply work
    second = stub.UploadMedia(upload_requests(photo, project="p1"), metadata=meta)
    assert second.faces[0].talent_id == "astronaut"
    listed = stub.ListConsents(pb.ListConsentsRequest(talent_id="astronaut"), metadata=meta)
    assert len(listed.records) == 2
    assert len(_events_of(stub, meta, first.media_id)) == 1
    assert len(_events_of(stub, meta, second.media_id)) == 1
    assert stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok
