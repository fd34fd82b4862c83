"""The gateway's four peers: one Protocol port per peer service, and its gRPC adapter.

Use-case modules depend on the Protocols only (tests may swap in a fake); `app.py` builds the
adapters on the channels it opens. Everything about the wire lives here: building the peer's
requests, following its pages to the end (`mixip.runtime.paging.all_items`, pages of the
largest size, `MAX_BATCH`), and chunking to its limits (at most `MAX_BATCH` events per
`RecordMatchEvents`), each done once.

The peers' messages that the gateway's own API carries unchanged (consent records, face
records, audit events, retention reports) are the shared vocabulary and pass through as they
are.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.retention.v1 import retention_pb2, retention_pb2_grpc
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import Page, all_items

T = TypeVar("T")


# -- matcher ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matched:
    """What the matcher made of a media: its kind and the labelled faces (labels are decided
    by the matcher alone, services/matcher/labels.py)."""

    kind: int
    content_type: str
    engine: str
    duration_seconds: float
    faces: list[common_pb2.FaceResult]
    frames_sampled: int = 0  # video only


class PendingMatch(Protocol):
    """A match running on the matcher while the gateway stores the media."""

    def result(self, timeout: float | None = None) -> Matched:
        """Waits for the match; TimeoutError when `timeout` seconds pass first."""
        ...

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class StoredVideo:
    """A stored video a segment call reads by ranges: whose it is and how to read it."""

    account_id: str
    project_id: str
    size_bytes: int
    open: Callable[[], BinaryIO]  # the decrypting reader (MediaStore.open), opened per call


class SegmentCall(Protocol):
    """One matcher call over a stored video, answered in the calling thread by `result`."""

    def result(self) -> Any:
        """The last message (the plan, or the segment's result); the call's error otherwise."""
        ...

    def cancel(self) -> None: ...


class MatcherPort(Protocol):
    def start_match(self, account_id: str, project_id: str, media: bytes) -> PendingMatch: ...

    def plan_segments(
        self, video: StoredVideo, segment_seconds: float, overlap_seconds: float
    ) -> SegmentCall:
        """`result()`: a PlanVideoSegmentsResponse (duration, segments)."""
        ...

    def match_segment(
        self,
        video: StoredVideo,
        segment: matcher_pb2.PlannedSegment,
        overlap_seconds: float,
        on_read: Callable[[], None],
        on_replica: Callable[[str], None] = lambda replica: None,
    ) -> SegmentCall:
        """`result()`: a SegmentResult (sealed frames, the replica); `on_read` at each range
        the matcher asks for (it is alive); `on_replica` once the matcher says which replica
        runs it."""
        ...

    def stitch_segments(
        self,
        account_id: str,
        project_id: str,
        content_type: str,
        count: int,
        segments: Iterable[matcher_pb2.SegmentResult],
    ) -> Matched:
        """Streams `count` segment results to the matcher, one message each in the order
        `segments` gives them, taking each from it only once the one before has been sent."""
        ...

    def enroll_face(
        self, account_id: str, talent_id: str, image: bytes, request_id: str
    ) -> matcher_pb2.FaceRecord: ...

    def talent_faces(
        self, account_id: str, talent_id: str, page_size: int, page_token: str
    ) -> Page[matcher_pb2.FaceRecord]: ...

    def all_talent_faces(self, account_id: str, talent_id: str) -> list[matcher_pb2.FaceRecord]: ...

    def delete_face(
        self, account_id: str, talent_id: str, face_id: str
    ) -> tuple[matcher_pb2.FaceRecord, int]:
        """(the deleted face, the collection version after the deletion)."""
        ...

    def delete_talent_faces(self, account_id: str, talent_id: str, request_id: str) -> int: ...

    def enrolled_talents(self, account_id: str) -> list[str]:
        """Every talent of the account with a face enrolled (an account's closure)."""
        ...


class _GrpcPendingMatch:
    def __init__(self, future: grpc.Future[matcher_pb2.MatchMediaResponse]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> Matched:
        try:
            reply: matcher_pb2.MatchMediaResponse = self._future.result(timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError from None
        return Matched(
            kind=reply.kind,
            content_type=reply.content_type,
            engine=reply.engine,
            duration_seconds=reply.duration_seconds,
            faces=list(reply.faces),
            frames_sampled=reply.frames_sampled,
        )

    def cancel(self) -> None:
        self._future.cancel()


# The most one range read may ask for (the matcher asks for blocks of 1 MiB).
MAX_READ_BYTES = 8 * 1024 * 1024


class _ReadsCall:
    """A bidirectional matcher call over a stored video: the header goes first, then each
    range the matcher asks for is read from the decrypting reader and sent; the last message
    is the answer. The matcher never holds more than its read-ahead of the video."""

    def __init__(
        self,
        method: Any,
        header: Any,
        request_type: Any,
        video: StoredVideo,
        on_read: Callable[[], None] = lambda: None,
        on_replica: Callable[[str], None] = lambda replica: None,
    ) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(header)
        self._request_type = request_type
        self._video = video
        self._on_read = on_read
        self._on_replica = on_replica
        self._call = method(self._feed())

    def _feed(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not None:
            yield request

    def result(self) -> Any:
        try:
            with self._video.open() as reader:
                for response in self._call:
                    if getattr(response, "replica", ""):  # a segment call's first message
                        self._on_replica(response.replica)
                    if not response.HasField("read"):
                        return response
                    wanted = response.read
                    if not (wanted.offset >= 0 and 0 < wanted.length <= MAX_READ_BYTES):
                        raise ValueError(f"matcher asked for a bad range: {wanted}")
                    reader.seek(wanted.offset)
                    data = _read_up_to(reader, wanted.length)
                    self._requests.put(self._request_type(data=data))
                    self._on_read()
            raise ConnectionError("the matcher ended the call without an answer")
        finally:
            self._requests.put(None)

    def cancel(self) -> None:
        self._call.cancel()


class MatcherClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = _stub(matcher_pb2_grpc.MatcherServiceStub, channel)

    def plan_segments(
        self, video: StoredVideo, segment_seconds: float, overlap_seconds: float
    ) -> SegmentCall:
        header = matcher_pb2.PlanVideoSegmentsHeader(
            source=_source(video),
            segment_seconds=segment_seconds,
            overlap_seconds=overlap_seconds,
        )
        return _ReadsCall(
            self.stub.PlanVideoSegments,
            matcher_pb2.PlanVideoSegmentsRequest(header=header),
            matcher_pb2.PlanVideoSegmentsRequest,
            video,
        )

    def match_segment(
        self,
        video: StoredVideo,
        segment: matcher_pb2.PlannedSegment,
        overlap_seconds: float,
        on_read: Callable[[], None],
        on_replica: Callable[[str], None] = lambda replica: None,
    ) -> SegmentCall:
        header = matcher_pb2.MatchVideoSegmentHeader(
            source=_source(video), segment=segment, overlap_seconds=overlap_seconds
        )
        call = _ReadsCall(
            self.stub.MatchVideoSegment,
            matcher_pb2.MatchVideoSegmentRequest(header=header),
            matcher_pb2.MatchVideoSegmentRequest,
            video,
            on_read,
            on_replica,
        )
        return _Unwrapped(call, lambda response: response.result)

    def stitch_segments(
        self,
        account_id: str,
        project_id: str,
        content_type: str,
        count: int,
        segments: Iterable[matcher_pb2.SegmentResult],
    ) -> Matched:
        header = matcher_pb2.StitchVideoSegmentsHeader(
            account_id=account_id,
            project_id=project_id,
            content_type=content_type,
            segment_count=count,
        )

        def requests() -> Iterator[matcher_pb2.StitchVideoSegmentsRequest]:
            # gRPC takes the next message once the last is written (flow control), so the
            # call holds about one segment's blob at a time, however many there are.
            yield matcher_pb2.StitchVideoSegmentsRequest(header=header)
            for segment in segments:
                yield matcher_pb2.StitchVideoSegmentsRequest(segment=segment)

        reply = self.stub.StitchVideoSegments(requests()).match
        return Matched(
            kind=reply.kind,
            content_type=reply.content_type,
            engine=reply.engine,
            duration_seconds=reply.duration_seconds,
            faces=list(reply.faces),
            frames_sampled=reply.frames_sampled,
        )

    def start_match(self, account_id: str, project_id: str, media: bytes) -> PendingMatch:
        request = matcher_pb2.MatchMediaRequest(
            account_id=account_id, project_id=project_id, media=media
        )
        return _GrpcPendingMatch(self.stub.MatchMedia.future(request))

    def enroll_face(
        self, account_id: str, talent_id: str, image: bytes, request_id: str
    ) -> matcher_pb2.FaceRecord:
        reply: matcher_pb2.EnrollTalentFaceResponse = self.stub.EnrollTalentFace(
            matcher_pb2.EnrollTalentFaceRequest(
                account_id=account_id, talent_id=talent_id, image=image, request_id=request_id
            )
        )
        return reply.face

    def talent_faces(
        self, account_id: str, talent_id: str, page_size: int, page_token: str
    ) -> Page[matcher_pb2.FaceRecord]:
        reply = self.stub.ListTalentFaces(
            matcher_pb2.ListTalentFacesRequest(
                account_id=account_id,
                talent_id=talent_id,
                page_size=page_size,
                page_token=page_token,
            )
        )
        return Page(list(reply.faces), reply.next_page_token)

    def all_talent_faces(self, account_id: str, talent_id: str) -> list[matcher_pb2.FaceRecord]:
        return all_items(lambda token: self.talent_faces(account_id, talent_id, MAX_BATCH, token))

    def delete_face(
        self, account_id: str, talent_id: str, face_id: str
    ) -> tuple[matcher_pb2.FaceRecord, int]:
        reply = self.stub.DeleteTalentFace(
            matcher_pb2.DeleteTalentFaceRequest(
                account_id=account_id, talent_id=talent_id, face_id=face_id
            )
        )
        return reply.face, reply.collection_version

    def delete_talent_faces(self, account_id: str, talent_id: str, request_id: str) -> int:
        reply = self.stub.DeleteTalentFaces(
            matcher_pb2.DeleteTalentFacesRequest(
                account_id=account_id, talent_id=talent_id, request_id=request_id
            )
        )
        return int(reply.deleted_count)

    def enrolled_talents(self, account_id: str) -> list[str]:
        def page(token: str) -> Page[str]:
            reply = self.stub.ListEnrolledTalents(
                matcher_pb2.ListEnrolledTalentsRequest(
                    account_id=account_id, page_size=MAX_BATCH, page_token=token
                )
            )
            return Page([t.talent_id for t in reply.talents], reply.next_page_token)

        return all_items(page)


# -- consent ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentDecision:
    """A consent to record for a talent of the account."""

    talent_id: str
    scope: int  # consent_pb2.ConsentScope
    project_id: str
    decision: int  # consent_pb2.ConsentDecision
    evidence: consent_pb2.Evidence | None
    request_id: str

    @property
    def is_biometric_grant(self) -> bool:
        return (
            self.scope == consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING
            and self.decision == consent_pb2.CONSENT_DECISION_GRANTED
        )


class ConsentPort(Protocol):
    def record_consent(
        self, account_id: str, decision: ConsentDecision
    ) -> consent_pb2.ConsentRecord: ...

    def consent_records(
        self, account_id: str, talent_id: str, page_size: int, page_token: str
    ) -> Page[consent_pb2.ConsentRecord]: ...

    def all_consent_records(
        self, account_id: str, talent_id: str
    ) -> list[consent_pb2.ConsentRecord]: ...

    def erase_talent(self, account_id: str, talent_id: str) -> int:
        """Erases the talent's ledger; the number of rows deleted."""
        ...


class ConsentClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = _stub(consent_pb2_grpc.ConsentServiceStub, channel)

    def record_consent(
        self, account_id: str, decision: ConsentDecision
    ) -> consent_pb2.ConsentRecord:
        reply: consent_pb2.RecordConsentResponse = self.stub.RecordConsent(
            consent_pb2.RecordConsentRequest(
                account_id=account_id,
                talent_id=decision.talent_id,
                scope=decision.scope,  # type: ignore[arg-type]
                project_id=decision.project_id,
                decision=decision.decision,  # type: ignore[arg-type]
                evidence=decision.evidence,
                request_id=decision.request_id,
            )
        )
        return reply.record

    def consent_records(
        self, account_id: str, talent_id: str, page_size: int, page_token: str
    ) -> Page[consent_pb2.ConsentRecord]:
        reply = self.stub.ListConsentRecords(
            consent_pb2.ListConsentRecordsRequest(
                account_id=account_id,
                talent_id=talent_id,
                page_size=page_size,
                page_token=page_token,
            )
        )
        return Page(list(reply.records), reply.next_page_token)

    def all_consent_records(
        self, account_id: str, talent_id: str
    ) -> list[consent_pb2.ConsentRecord]:
        return all_items(
            lambda token: self.consent_records(account_id, talent_id, MAX_BATCH, token)
        )

    def erase_talent(self, account_id: str, talent_id: str) -> int:
        erased = self.stub.EraseTalentConsent(
            consent_pb2.EraseTalentConsentRequest(account_id=account_id, talent_id=talent_id)
        )
        return int(erased.records_deleted + erased.outbox_rows_deleted)


# -- audit --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogVerdict:
    ok: bool
    events_checked: int
    first_broken_sequence: int
    detail: str


class AuditPort(Protocol):
    def record_match_events(
        self, account_id: str, events: Sequence[audit_pb2.MatchEventInput]
    ) -> None:
        """Records the events, in as many calls as the audit service's limit needs."""
        ...

    def lift_shred_marker(self, account_id: str, talent_id: str) -> None: ...

    def events(
        self,
        account_id: str,
        *,
        talent_id: str,
        project_id: str,
        since: Timestamp | None,
        page_size: int,
        page_token: str,
    ) -> Page[audit_pb2.AuditEvent]: ...

    def all_talent_events(self, account_id: str, talent_id: str) -> list[audit_pb2.AuditEvent]: ...

    def verify_log(self, account_id: str) -> LogVerdict: ...

    def shred_talent_salt(self, account_id: str, talent_id: str) -> bool:
        """Whether a salt was destroyed."""
        ...

    def vault_status(self) -> tuple[int, Timestamp]:
        """(the vault's key version, when it was rotated)."""
        ...

    def checkpoint(self, account_id: str) -> str:
        """The latest signed checkpoint (C2SP note) of the account's tree."""
        ...

    def inclusion_proof(
        self, account_id: str, sequence: int, tree_size: int
    ) -> audit_pb2.GetInclusionProofResponse: ...

    def consistency_proof(
        self, account_id: str, from_size: int, to_size: int
    ) -> audit_pb2.GetConsistencyProofResponse: ...

    def log_public_key(self, account_id: str) -> str: ...


class AuditClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = _stub(audit_pb2_grpc.AuditServiceStub, channel)

    def record_match_events(
        self, account_id: str, events: Sequence[audit_pb2.MatchEventInput]
    ) -> None:
        for start in range(0, len(events), MAX_BATCH):
            self.stub.RecordMatchEvents(
                audit_pb2.RecordMatchEventsRequest(
                    account_id=account_id, events=events[start : start + MAX_BATCH]
                )
            )

    def lift_shred_marker(self, account_id: str, talent_id: str) -> None:
        self.stub.LiftShredMarker(
            audit_pb2.LiftShredMarkerRequest(account_id=account_id, talent_id=talent_id)
        )

    def events(
        self,
        account_id: str,
        *,
        talent_id: str,
        project_id: str,
        since: Timestamp | None,
        page_size: int,
        page_token: str,
    ) -> Page[audit_pb2.AuditEvent]:
        reply = self.stub.ListEvents(
            audit_pb2.ListEventsRequest(
                account_id=account_id,
                talent_id=talent_id,
                project_id=project_id,
                since=since,
                page_size=page_size,
                page_token=page_token,
            )
        )
        return Page(list(reply.events), reply.next_page_token)

    def all_talent_events(self, account_id: str, talent_id: str) -> list[audit_pb2.AuditEvent]:
        return all_items(
            lambda token: self.events(
                account_id,
                talent_id=talent_id,
                project_id="",
                since=None,
                page_size=MAX_BATCH,
                page_token=token,
            )
        )

    def verify_log(self, account_id: str) -> LogVerdict:
        reply = self.stub.VerifyLog(audit_pb2.VerifyLogRequest(account_id=account_id))
        return LogVerdict(reply.ok, reply.events_checked, reply.first_broken_sequence, reply.detail)

    def shred_talent_salt(self, account_id: str, talent_id: str) -> bool:
        reply = self.stub.ShredTalentSalt(
            audit_pb2.ShredTalentSaltRequest(account_id=account_id, talent_id=talent_id)
        )
        return bool(reply.salt_destroyed)

    def vault_status(self) -> tuple[int, Timestamp]:
        reply = self.stub.GetVaultStatus(audit_pb2.GetVaultStatusRequest())
        return reply.key_version, reply.rotated_at

    def checkpoint(self, account_id: str) -> str:
        reply = self.stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(account_id=account_id))
        return reply.checkpoint

    def inclusion_proof(
        self, account_id: str, sequence: int, tree_size: int
    ) -> audit_pb2.GetInclusionProofResponse:
        return self.stub.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(
                account_id=account_id, sequence=sequence, tree_size=tree_size
            )
        )

    def consistency_proof(
        self, account_id: str, from_size: int, to_size: int
    ) -> audit_pb2.GetConsistencyProofResponse:
        return self.stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(
                account_id=account_id, from_size=from_size, to_size=to_size
            )
        )

    def log_public_key(self, account_id: str) -> str:
        reply = self.stub.GetLogPublicKey(audit_pb2.GetLogPublicKeyRequest(account_id=account_id))
        return reply.verifier_key


# -- retention ----------------------------------------------------------------------------------


class RetentionPort(Protocol):
    def run_now(
        self, job: int, as_of: Timestamp | None, requested_by: str
    ) -> retention_pb2.RunReport: ...

    def status(self) -> retention_pb2.GetStatusResponse: ...


class RetentionClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = _stub(retention_pb2_grpc.RetentionServiceStub, channel)

    def run_now(
        self, job: int, as_of: Timestamp | None, requested_by: str
    ) -> retention_pb2.RunReport:
        reply: retention_pb2.RunNowResponse = self.stub.RunNow(
            retention_pb2.RunNowRequest(
                job=job,  # type: ignore[arg-type]
                as_of=as_of,
                requested_by=requested_by,
            )
        )
        return reply.report

    def status(self) -> retention_pb2.GetStatusResponse:
        reply: retention_pb2.GetStatusResponse = self.stub.GetStatus(
            retention_pb2.GetStatusRequest()
        )
        return reply


@dataclass(frozen=True)
class Peers:
    """The four ports, as the composition root hands them out."""

    matcher: MatcherPort
    consent: ConsentPort
    audit: AuditPort
    retention: RetentionPort

    @classmethod
    def over(cls, channels: dict[str, grpc.Channel]) -> Peers:
        """The gRPC adapters on the channels named matcher, consent, audit and retention."""
        return cls(
            matcher=MatcherClient(channels["matcher"]),
            consent=ConsentClient(channels["consent"]),
            audit=AuditClient(channels["audit"]),
            retention=RetentionClient(channels["retention"]),
        )


@dataclass(frozen=True)
class _Unwrapped:
    """A call whose answer is one field of its last message."""

    call: _ReadsCall
    field: Callable[[Any], Any]

    def result(self) -> Any:
        return self.field(self.call.result())

    def cancel(self) -> None:
        self.call.cancel()


def _read_up_to(reader: BinaryIO, length: int) -> bytes:
    """`length` bytes, fewer only at the end."""
    data = reader.read(length)
    while len(data) < length:
        more = reader.read(length - len(data))
        if not more:
            break
        data += more
    return data


def _source(video: StoredVideo) -> matcher_pb2.VideoSource:
    return matcher_pb2.VideoSource(
        account_id=video.account_id, project_id=video.project_id, size_bytes=video.size_bytes
    )


def _stub(factory: Callable[[grpc.Channel], T], channel: grpc.Channel) -> T:
    """The generated stub on `channel` (grpc_tools generates the stub classes untyped)."""
    return factory(channel)
