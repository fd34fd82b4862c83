"""Erasure under load, with real processes (`mixip up`'s launcher): four clients upload photos
of the talent while it is erased, twenty rounds (re-consent and re-enrollment each round), and
no link to the talent is left after any erasure."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from mixip.cli.dev_mesh import ensure_dev_account
from mixip.cli.launcher import Mesh
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.config import SERVICES, variable
from mixip.runtime.connection import Connection
from mixip.runtime.times import utcnow
from tests.support import faces
from tests.support.databases import fresh_schema_url
from tests.support.gateway_calls import consent, enroll, upload_requests

pytestmark = pytest.mark.slow

TALENT = "astronaut"
ROUNDS = 20
CLIENTS = 4


@pytest.fixture
def mesh(tmp_path, backend, pg_test_database):
    env = {"MIXIP_GATEWAY_ERASURE_RESUME_SECONDS": "5"}
    if backend == "postgresql":
        env |= {
            variable(s, "DATABASE_URL"): fresh_schema_url(pg_test_database, s) for s in SERVICES
        }
    mesh = Mesh(tmp_path / "data", extra_env=env)
    mesh.start()
    yield mesh
    mesh.stop()


class Client(threading.Thread):
    """Uploads the photo again and again until told to stop; keeps every reply."""

    def __init__(self, stub, meta, photo: bytes) -> None:
        super().__init__(daemon=True)
        self.stub, self.meta, self.photo = stub, meta, photo
        self.uploaded = threading.Event()  # at least one upload finished
        self.stop = threading.Event()
        self.replies: list[pb.UploadMediaResponse] = []
        self.errors: list[grpc.StatusCode] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.stub.UploadMedia(
                    upload_requests(self.photo, project="p1"), metadata=self.meta, timeout=60
                )
            except grpc.RpcError as exc:
                self.errors.append(exc.code())
                continue
            self.replies.append(reply)
            self.uploaded.set()


def _assert_no_link(stub, meta, media_ids: list[str], where: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ExportTalentData(pb.ExportTalentDataRequest(talent_id=TALENT), metadata=meta)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, where
    events = stub.ListAuditEvents(pb.ListAuditEventsRequest(talent_id=TALENT), metadata=meta)
    assert list(events.events) == [], where
    listed = stub.ListTalentFaces(pb.ListTalentFacesRequest(talent_id=TALENT), metadata=meta)
    assert list(listed.faces) == [], where
    for media_id in media_ids:
        stored = stub.GetMediaResults(pb.GetMediaResultsRequest(media_id=media_id), metadata=meta)
        assert all(not f.talent_id for f in stored.media.faces), where
        assert all(f.label == common_pb2.FACE_LABEL_UNKNOWN for f in stored.media.faces), where


def test_uploads_racing_twenty_erasures_leave_no_link(mesh):
    started = time.monotonic()
    conn = Connection(mesh.data_dir, mesh.addresses["gateway"])
    ensure_dev_account(conn)
    stub, meta = conn.gateway()
    calls = type("Calls", (), {"stub": stub})()  # what tests.support.gateway_calls expects
    photo = faces.encode(faces.scaled(faces.astronaut(), 0.5))
    linked_before_erasure = erased_in_flight = 0  # erased_in_flight: caught by the fence
    for round_ in range(ROUNDS):
        where = f"round {round_}"
        consent(calls, meta, utcnow, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
        consent(calls, meta, utcnow, TALENT, cpb.CONSENT_SCOPE_FACE_USAGE, project="p1")
        enroll(calls, meta, TALENT, faces.astronaut())
        clients = [Client(stub, meta, photo) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:  # links exist now, and the next uploads are in flight
            assert client.uploaded.wait(60), where
        stub.EraseTalent(
            pb.EraseTalentRequest(talent_id=TALENT, request_id=f"erase-{round_}"), metadata=meta
        )
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(90)
            assert not client.is_alive(), where
            assert client.errors == [], where
        replies = [r for c in clients for r in c.replies]
        linked_before_erasure += sum(1 for r in replies if r.faces and r.faces[0].talent_id)
        erased_in_flight += sum(
            1
            for r in replies
            if r.faces and r.faces[0].reason == common_pb2.LABEL_REASON_TALENT_ERASED
        )
        _assert_no_link(stub, meta, [r.media_id for r in replies], where)
    # every round had uploads linked to the talent before its erasure (so links to remove)
    assert linked_before_erasure >= ROUNDS * CLIENTS
    assert stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok
    print(f"stress: {ROUNDS} rounds, {erased_in_flight} uploads fenced, ", end="")
    print(f"{time.monotonic() - started:.1f}s")
