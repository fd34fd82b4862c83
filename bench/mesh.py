"""The system under test for the mesh benchmarks, and its baseline.

- `RunningMesh`: the real mesh as `mixip up` runs it (`mixip.cli.launcher.Mesh`): five service
  processes on loopback with the embedded defaults (SQLite files and the encrypted media
  directory in a temporary data directory). Processes, not in-process servers, because that is
  how the mesh is deployed: each service has its own interpreter (and GIL), and the cost of every
  hop (gRPC, serialisation, storage) is paid for real. Driven through the gateway with real gRPC
  clients and a real API key.
- `RawEngine`: the baseline: `LocalEngine` + `ExactIndex` in this process, decode + detect +
  embed + search on the same JPEG bytes, nothing else.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import cv2
import numpy as np

from bench import media
from mixip.cli.dev_mesh import ensure_dev_account
from mixip.cli.launcher import Mesh
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mixip.runtime.connection import Connection
from mixip.runtime.times import to_timestamp, utcnow
from services.matcher.engines.local import LocalEngine
from services.matcher.index import ExactIndex

PROJECT = "bench-film"
CHUNK = 1024 * 1024  # what the CLI sends per message
TALENTS = {"astronaut": media.astronaut, "grace-hopper": media.grace_hopper}


class RunningMesh:
    """`mixip up` in a temporary data directory, with an account and two enrolled talents."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mixip-bench-"))
        self.data_dir = self.root / "data"
        keys = {"MIXIP_KEY_DIR": str(self.root / "keys")}  # apart from data, removed with it
        self.mesh = Mesh(self.data_dir, extra_env=keys | dict(extra_env or {}))
        self._local = threading.local()

    def __enter__(self) -> RunningMesh:
        self.mesh.start()
        self.connection = Connection(self.data_dir, self.mesh.addresses["gateway"])
        ensure_dev_account(self.connection)
        self.metadata = (("authorization", f"Bearer {self.connection.api_key()}"),)
        for talent, image in TALENTS.items():
            self.enroll(talent, media.jpeg(image()))
        return self

    def __exit__(self, *exc) -> None:
        self.mesh.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.mesh.processes.values()]

    def stub(self) -> gateway_pb2_grpc.GatewayServiceStub:
        """One channel (one HTTP/2 connection) per client thread, like separate clients."""
        stub = getattr(self._local, "stub", None)
        if stub is None:
            self._local.channel = self.connection.channel()
            stub = self._local.stub = gateway_pb2_grpc.GatewayServiceStub(self._local.channel)
        return stub

    def enroll(self, talent: str, image: bytes) -> None:
        stub = self.stub()
        for scope, project in (
            (consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING, ""),
            (consent_pb2.CONSENT_SCOPE_FACE_USAGE, PROJECT),
        ):
            stub.RecordConsent(
                gateway_pb2.RecordConsentRequest(
                    talent_id=talent,
                    scope=scope,
                    project_id=project,
                    decision=consent_pb2.CONSENT_DECISION_GRANTED,
                    evidence=consent_pb2.Evidence(
                        method="bench",
                        policy_version="bench-1",
                        actor="bench",
                        captured_at=to_timestamp(utcnow()),
                    ),
                    request_id=uuid.uuid4().hex,
                ),
                metadata=self.metadata,
            )
        header = gateway_pb2.EnrollTalentRequest(
            header=gateway_pb2.EnrollHeader(talent_id=talent, request_id=uuid.uuid4().hex)
        )
        stub.EnrollTalent(_chunks(header, image), metadata=self.metadata)

    def upload(self, data: bytes, metadata: tuple = ()) -> gateway_pb2.UploadMediaResponse:
        header = gateway_pb2.UploadMediaRequest(
            header=gateway_pb2.UploadHeader(
                project_id=PROJECT, filename="bench", request_id=uuid.uuid4().hex
            )
        )
        return self.stub().UploadMedia(_chunks(header, data), metadata=self.metadata + metadata)


def _chunks(header, data: bytes):
    yield header
    for start in range(0, len(data), CHUNK):
        yield type(header)(chunk=data[start : start + CHUNK])


class RawEngine:
    """The engine alone: decode + detect + embed + search, in this process, on the same bytes,
    against the same two enrolled talents (embedded the way the matcher enrolls them)."""

    def __init__(self) -> None:
        self.engine = LocalEngine(index_for=lambda _account: self.index)
        self.index = ExactIndex(np.zeros((0, 128), np.float32), [], [])
        vectors, talents = [], []
        for talent, image in TALENTS.items():
            pixels = image()
            (face,) = [f for f in self.engine.detect(pixels) if f.score >= 0.85][:1]
            vectors.append(self.engine.describe(pixels, [face])[0])
            talents.append(talent)
        self.index = ExactIndex(np.stack(vectors), talents, [uuid.uuid4().hex for _ in talents])

    def run(self, data: bytes) -> int:
        """Faces found; every step the mesh's matcher does on an image, minus the mesh."""
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        faces = self.engine.detect(image)
        if faces:
            self.engine.search("bench", self.engine.describe(image, faces), 5)
        return len(faces)
