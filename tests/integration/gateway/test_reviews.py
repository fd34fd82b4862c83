"""Review: a project's media listed with their label counts and undecided faces, and review
decisions: append-only, idempotent, kept with their audit events queued in the same commit
(the audit outbox), never linking an erased talent, never changing a label, deleted with their
media."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import func, select

from gateway.seals import media_subject
from gateway.store import MediaRow, ReviewDecisionRow
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2 as common
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.web.app import create_app
from mixip.web.sessions import Sessions
from services.audit.store import EventRow
from tests.integration.gateway.test_erasure_fence import _owed
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.gateway_calls import PROJECT, decide, group_photo, invite, upload
from tests.support.status import expect_error, expect_invalid
from tests.support.web import page, serving

APPROVED = common.REVIEW_DECISION_APPROVED_FOR_RELEASE
BLOCKED = common.REVIEW_DECISION_BLOCKED
NEEDS_FORM = common.REVIEW_DECISION_NEEDS_RELEASE_FORM


class RecordingAudit:
    """The gateway's real audit port, with the events it was asked to record kept."""

    @classmethod
    def on(cls, gw) -> RecordingAudit:
        """Records what the gateway's audit outbox delivers; its deliverer is stopped, so
        events go out with a reader's or an erasure's drain only (once each)."""
        gw.app.audit_outbox.stop()
        spy = cls(gw.app.audit_outbox.audit)
        gw.app.audit_outbox.audit = spy
        return spy

    def decisions(self) -> list[audit_pb2.MatchEventInput]:
        return [e for e in self.sent if e.kind == audit_pb2.EVENT_KIND_REVIEW_DECISION]

    def __init__(self, port) -> None:
        self.port = port
        self.sent: list[audit_pb2.MatchEventInput] = []

    def record_match_events(self, account_id, events):
        self.sent += events
        return self.port.record_match_events(account_id, events)

    def __getattr__(self, name):
        return getattr(self.port, name)


def astronaut_face(media: pb.UploadMediaResponse) -> int:
    [index] = [f.face_index for f in media.faces if f.talent_id == "astronaut"]
    return index


def results(gw, meta, media_id) -> pb.GetMediaResultsResponse:
    return gw.stub.GetMediaResults(pb.GetMediaResultsRequest(media_id=media_id), metadata=meta)


def decision_rows(gw) -> int:
    with gw.app.db.read() as session:
        return session.scalar(select(func.count()).select_from(ReviewDecisionRow))


def listing(gw, meta, **request) -> list[pb.MediaSummary]:
    media, token = [], ""
    while True:
        reply = gw.stub.ListMedia(
            pb.ListMediaRequest(project_id=PROJECT, page_token=token, **request), metadata=meta
        )
        media += reply.media
        token = reply.next_page_token
        if not token:
            return media


def test_media_are_listed_newest_first_with_counts_filters_and_pages(gateway, studio, clock):
    account, meta = studio
    group = upload(gateway, meta, group_photo(), filename="group.jpg")
    clock.advance(minutes=1)
    alone = upload(gateway, meta, faces.encode(faces.astronaut()), filename="alone.jpg")
    clock.advance(minutes=1)
    stranger = upload(gateway, meta, faces.encode(faces.grace_hopper()), filename="hopper.jpg")
    decide(gateway, meta, alone.media_id, 0, APPROVED)
    clock.advance(seconds=1)
    decide(gateway, meta, group.media_id, astronaut_face(group), BLOCKED)

    newest_first = [stranger.media_id, alone.media_id, group.media_id]
    for page_size in (0, 1, 2):
        assert [m.media_id for m in listing(gateway, meta, page_size=page_size)] == newest_first
    summary = {m.media_id: m for m in listing(gateway, meta)}[group.media_id]
    assert (summary.filename, summary.kind, summary.uploaded_by_account_id) == (
        "group.jpg",
        common.MEDIA_KIND_IMAGE,
        account,
    )
    assert (
        summary.face_count,
        summary.cleared_faces,
        summary.possible_faces,
        summary.unknown_faces,
        summary.undecided_faces,
    ) == (2, 1, 0, 1, 1)

    unknown = listing(gateway, meta, label=common.FACE_LABEL_UNKNOWN, page_size=1)
    assert [m.media_id for m in unknown] == [stranger.media_id, group.media_id]
    undecided = listing(gateway, meta, undecided=True, page_size=1)
    assert [m.media_id for m in undecided] == [stranger.media_id, group.media_id]
    cleared_undecided = listing(gateway, meta, label=common.FACE_LABEL_CLEARED, undecided=True)
    assert [m.media_id for m in cleared_undecided] == [group.media_id]  # its UNKNOWN face waits

    first = gateway.stub.ListMedia(
        pb.ListMediaRequest(project_id=PROJECT, page_size=1), metadata=meta
    )
    expect_invalid(
        gateway.stub.ListMedia,
        pb.ListMediaRequest(project_id=PROJECT, undecided=True, page_token=first.next_page_token),
        metadata=meta,
        fields={"page_token"},
    )
    expect_invalid(
        gateway.stub.ListMedia,
        pb.ListMediaRequest(project_id="", label=9, page_size=5000),
        metadata=meta,
        fields={"project_id", "label", "page_size"},
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ListMedia,
        pb.ListMediaRequest(project_id="no-such-project"),
        metadata=meta,
    )


def test_decisions_are_append_only_and_never_change_a_label(gateway, studio, clock):
    _, meta = studio
    media = upload(gateway, meta, group_photo())
    face = astronaut_face(media)
    first = decide(gateway, meta, media.media_id, face, NEEDS_FORM, note="waiting for the form")
    clock.advance(minutes=5)
    second = decide(gateway, meta, media.media_id, face, APPROVED, note="form signed")
    assert first.decision_id != second.decision_id
    assert second.decided_by_key_id and second.decided_by_account_id == studio[0]
    got = results(gateway, meta, media.media_id)
    assert [(d.decision_id, d.decision, d.note) for d in got.decisions] == [
        (first.decision_id, NEEDS_FORM, "waiting for the form"),
        (second.decision_id, APPROVED, "form signed"),
    ]
    assert list(got.media.faces) == list(media.faces)  # the labels are as the matcher gave them

    # a label changed by an erasure leaves the decisions as they were, but for their notes
    # (free text that may name the talent: blanked by the erasure)
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
    after = results(gateway, meta, media.media_id)
    assert after.media.faces[face].reason == common.LABEL_REASON_TALENT_ERASED
    for decision in got.decisions:
        decision.note = ""
    assert list(after.decisions) == list(got.decisions)


def test_a_decision_is_audited_with_its_talent_hashed(gateway, studio):
    _, meta = studio
    spy = RecordingAudit.on(gateway)
    media = upload(gateway, meta, group_photo())
    face = astronaut_face(media)
    made = decide(gateway, meta, media.media_id, face, BLOCKED, note="no release on file")

    linked = gateway.stub.ListAuditEvents(  # a reader's drain: the queued event is delivered
        pb.ListAuditEventsRequest(talent_id="astronaut"), metadata=meta
    ).events
    [sent] = spy.decisions()
    assert (sent.kind, sent.decision) == (audit_pb2.EVENT_KIND_REVIEW_DECISION, BLOCKED)
    assert (sent.talent_id, sent.label) == ("astronaut", common.FACE_LABEL_CLEARED)
    assert sent.idempotency_key == f"review:{made.decision_id}"
    assert "no release on file" not in str(sent)  # the note stays out of the audit log

    [event] = [e for e in linked if e.idempotency_key.startswith("review:")]
    assert event.talent_linked and event.face_index == face and event.project_id == PROJECT
    assert event.kind == audit_pb2.EVENT_KIND_REVIEW_DECISION
    assert event.decision == made.decision
    assert gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok

    # the export of the talent carries the decisions on its faces
    document = json.loads(
        gateway.stub.ExportTalentData(
            pb.ExportTalentDataRequest(talent_id="astronaut"), metadata=meta
        ).document_json
    )
    [result] = document["media_results"]
    assert [d["decision"] for d in result["review_decisions"]] == ["REVIEW_DECISION_BLOCKED"]


def test_a_retried_decision_returns_the_first_and_records_one_event(gateway, studio):
    """Both kinds of retry digest: a note on the talent's face (keyed with the talent's key)
    and a decision without a note (the account's key)."""
    _, meta = studio
    media = upload(gateway, meta, group_photo())
    face = astronaut_face(media)
    other = 1 - face
    firsts = []
    for request_id, index, note in (("d-1", face, "Buzz signed"), ("d-2", other, "")):
        asked = {"note": note, "request_id": request_id}
        first = decide(gateway, meta, media.media_id, index, APPROVED, **asked)
        assert decide(gateway, meta, media.media_id, index, APPROVED, **asked) == first
        firsts.append(first)
        for changed in ({"decision": BLOCKED}, {"note": note + "!"}, {"index": 1 - index}):
            request = {"index": index, "decision": APPROVED, "note": note} | changed
            reused = expect_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                decide,
                gateway,
                meta,
                media.media_id,
                request["index"],
                request["decision"],
                note=request["note"],
                request_id=request_id,
            )
            assert reused.reason == "IDEMPOTENCY_KEY_REUSED", changed
    assert decision_rows(gateway) == 2
    events = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta).events
    assert [e.idempotency_key for e in events if e.idempotency_key.startswith("review:")] == [
        f"review:{first.decision_id}" for first in firsts
    ]


def test_a_decision_that_fails_in_its_commit_keeps_neither_its_row_nor_its_event(gateway, studio):
    account, meta = studio
    media = upload(gateway, meta, group_photo())
    gateway.app.audit_outbox.stop()
    gateway.app.audit_outbox.drain(account)  # the upload's events
    gateway.app.reviews.checkpoint = _failing_at("review.queued")
    expect_error(
        grpc.StatusCode.INTERNAL, decide, gateway, meta, media.media_id, 0, APPROVED, request_id="r"
    )
    assert decision_rows(gateway) == 0
    assert _owed(gateway, account) == 0
    gateway.app.reviews.checkpoint = lambda name: None
    made = decide(gateway, meta, media.media_id, 0, APPROVED, request_id="r")
    events = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta).events
    keys = [e.idempotency_key for e in events if e.idempotency_key.startswith("review:")]
    assert keys == [f"review:{made.decision_id}"]


def _failing_at(name: str):
    def checkpoint(reached: str) -> None:
        if reached == name:
            raise RuntimeError("the gateway stopped here")

    return checkpoint


def test_bad_decisions_are_refused_and_keep_nothing(gateway, studio):
    _, meta = studio
    media = upload(gateway, meta, group_photo())
    expect_invalid(
        gateway.stub.RecordReviewDecision,
        pb.RecordReviewDecisionRequest(
            media_id="", face_index=-1, decision=0, note="x" * 1001, request_id="\u202e"
        ),
        metadata=meta,
        fields={"media_id", "face_index", "decision", "note", "request_id"},
    )
    expect_invalid(decide, gateway, meta, media.media_id, 0, 42, fields={"decision"})
    missing = expect_error(
        grpc.StatusCode.NOT_FOUND, decide, gateway, meta, media.media_id, 2, APPROVED
    )
    assert missing.message == "no such face"
    expect_error(grpc.StatusCode.NOT_FOUND, decide, gateway, meta, "med_unknown", 0, APPROVED)
    assert decision_rows(gateway) == 0


def test_audit_down_a_decision_is_kept_and_its_event_delivered_once_it_is_back(
    gateway, studio, serve, clock
):
    """As an upload's: the decision is kept with its event queued in the same commit, a retry
    while audit is down returns it and queues nothing more, and the event is recorded once
    when audit is back."""
    account, meta = studio
    outbox = gateway.app.audit_outbox
    media = upload(gateway, meta, group_photo())
    outbox.stop()  # this test delivers by hand
    outbox.drain(account)  # the upload's events
    gateway.audit.running.stop(0)
    made = decide(gateway, meta, media.media_id, 0, APPROVED, request_id="down")
    assert decide(gateway, meta, media.media_id, 0, APPROVED, request_id="down") == made
    assert decision_rows(gateway) == 1 and _owed(gateway, account) == 1
    assert outbox.run_once() == 0  # audit is down: nothing delivered, nothing lost
    assert _owed(gateway, account) == 1

    serve(gateway.audit.app, listen=gateway.audit.address)  # audit comes back
    grpc.channel_ready_future(gateway.app.channels["audit"]).result(timeout=15)
    clock.advance(minutes=1)  # past the retry backoff
    assert outbox.run_once() == 1
    assert outbox.run_once() == 0 and _owed(gateway, account) == 0
    with gateway.audit.app.db.read() as session:
        recorded = session.scalars(
            select(EventRow.idempotency_key).where(
                EventRow.account_id == account, EventRow.idempotency_key.startswith("review:")
            )
        ).all()
    assert recorded == [f"review:{made.decision_id}"]


def test_a_decision_on_an_erased_talents_face_links_no_talent(gateway, studio):
    _, meta = studio
    media = upload(gateway, meta, group_photo())
    face = astronaut_face(media)
    decide(gateway, meta, media.media_id, face, APPROVED)
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
    decide(gateway, meta, media.media_id, face, BLOCKED)
    linked = gateway.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(talent_id="astronaut"), metadata=meta
    ).events
    assert list(linked) == []
    events = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta).events
    decisions = [e for e in events if e.idempotency_key.startswith("review:")]
    # the first event's hash is unlinkable (its salt is shredded); the second carries none
    assert [e.talent_linked for e in decisions] == [True, False]


def test_an_erasure_blanks_the_notes_on_the_talents_faces_and_keeps_the_decisions(gateway, studio):
    """A reviewer's note is free text that may name the talent: the erasure's scrub blanks it
    with the face's talent id, in the same transaction; notes on other faces stay."""
    _, meta = studio
    media = upload(gateway, meta, group_photo())
    other = upload(gateway, meta, group_photo())
    face = astronaut_face(media)
    [stranger] = [f.face_index for f in media.faces if f.face_index != face]
    decide(gateway, meta, media.media_id, face, APPROVED, note="Buzz signed the release")
    decide(gateway, meta, media.media_id, face, BLOCKED, note="Buzz withdrew")
    decide(gateway, meta, media.media_id, stranger, NEEDS_FORM, note="extra, no form yet")
    decide(gateway, meta, other.media_id, astronaut_face(other), BLOCKED)  # no note to blank

    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)

    shown = results(gateway, meta, media.media_id).decisions
    assert [(d.face_index, d.decision, d.note) for d in shown] == [
        (face, APPROVED, ""),
        (face, BLOCKED, ""),
        (stranger, NEEDS_FORM, "extra, no form yet"),
    ]
    with gateway.app.db.read() as session:
        notes = session.execute(
            select(
                ReviewDecisionRow.media_id,
                ReviewDecisionRow.face_index,
                ReviewDecisionRow.sealed_note.is_not(None),
            )
        ).all()
    assert sorted(notes) == sorted(
        [
            (media.media_id, face, False),
            (media.media_id, face, False),
            (media.media_id, stranger, True),  # sealed, under the account's key
            (other.media_id, astronaut_face(other), False),
        ]
    )


@pytest.mark.parametrize("erase_until", ["erase.consent", "erase.audit"])
def test_a_decision_during_an_erasure_links_no_talent(gateway, studio, erase_until):
    """The erasure is paused with its intent open (the stored face still names the talent):
    the decision's event must not carry it."""
    _, meta = studio
    media = upload(gateway, meta, group_photo())
    face = astronaut_face(media)
    spy = RecordingAudit.on(gateway)
    hooks = Checkpoints()
    gateway.app.erasures.checkpoint = hooks
    pause = hooks.pause_at(erase_until)
    erasing = Outcome(
        lambda: gateway.stub.EraseTalent(
            pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta
        ),
        pause,
    )
    pause.reached()
    decide(gateway, meta, media.media_id, face, BLOCKED)
    pause.release()
    assert erasing.join().error is None
    linked = gateway.stub.ListAuditEvents(  # a reader's drain: the queued event is delivered
        pb.ListAuditEventsRequest(talent_id="astronaut"), metadata=meta
    ).events
    assert list(linked) == []
    [sent] = spy.decisions()
    assert (sent.talent_id, sent.reason) == ("", common.LABEL_REASON_TALENT_ERASED)


def test_decisions_go_with_their_media_when_the_retention_purge_deletes_it(gateway, studio, clock):
    account, meta = studio
    media = upload(gateway, meta, group_photo())
    decide(gateway, meta, media.media_id, 0, APPROVED)
    decide(gateway, meta, media.media_id, 1, BLOCKED)
    assert decision_rows(gateway) == 2
    assert media_keys(gateway, account, [media.media_id]) == {media.media_id}
    done = gateway.app.retention.purge_expired(clock() + timedelta(days=400), 100)
    assert done.media_deleted == 1
    assert decision_rows(gateway) == 0
    # and its file name's key (an expiry owes the vault no rotation: it erases no one)
    assert media_keys(gateway, account, [media.media_id]) == set()
    assert gateway.app.vault.status().rotation_due_at is None


def media_keys(gateway, account: str, media_ids: list[str]) -> set[str]:
    """The media among these whose file name's key lives."""
    with gateway.app.db.read() as session:
        subjects = {media_subject(m): m for m in media_ids}
        keys = gateway.app.vault.talent_keys(session, account, subjects, create=False)
    return {subjects[s] for s in keys}


NAMING = "Eileen-Collins-take-3.jpg"  # a file name that names the talent


def test_an_erasure_blanks_the_file_names_of_the_talents_media_for_every_role(gateway, studio):
    """Finding #5: a file name may name the talent, and next to a face marked TALENT_ERASED it
    would link them again. The erasure's scrub blanks the file names of the media whose faces
    matched the talent (clients show the media id) and destroys the keys they were sealed
    under; no role finds them through ListMedia, GetMediaResults, the previews or the review
    page, and other media keep theirs."""
    owner, meta = studio
    gateway.stub.CreateProject(
        pb.CreateProjectRequest(project_id=PROJECT, display_name="Film"), metadata=meta
    )
    metas = {"owner": meta}
    for role in ("reviewer", "viewer", "uploader"):
        account, metas[role] = gateway.new_account(role)
        invite(gateway, meta, account, getattr(pb, f"PROJECT_ROLE_{role.upper()}"))
    alone = upload(gateway, metas["uploader"], faces.encode(faces.astronaut()), filename=NAMING)
    group = upload(gateway, meta, group_photo(), filename="eileen-collins-and-grace.jpg")
    other = upload(gateway, meta, faces.encode(faces.grace_hopper()), filename="hopper.jpg")

    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)

    sessions = Sessions()
    with serving(create_app(gateway.channel, sessions)) as base:
        for role, role_meta in metas.items():
            session = sessions.new(role_meta[0][1].removeprefix("Bearer "))
            listed = listing(gateway, role_meta)
            seen: list[bytes] = [m.SerializeToString() for m in listed]
            html = page(base, session.session_id, f"/projects/{PROJECT}")
            for media in listed:
                seen.append(results(gateway, role_meta, media.media_id).SerializeToString())
                seen.append(
                    gateway.stub.GetMediaPreview(
                        pb.GetMediaPreviewRequest(media_id=media.media_id), metadata=role_meta
                    ).SerializeToString()
                )
                html += page(base, session.session_id, f"/media/{media.media_id}")
            assert not [b for b in seen if b"eileen" in b.lower()], role
            assert "eileen" not in html.lower(), role
            assert alone.media_id in html, role  # shown by its id instead
    names = {m.media_id: m.filename for m in listing(gateway, meta)}
    assert names == {alone.media_id: "", group.media_id: "", other.media_id: "hopper.jpg"}
    with gateway.app.db.read() as session:
        stored = session.execute(
            select(MediaRow.media_id, MediaRow.legacy_filename, MediaRow.sealed_filename)
        ).all()
    assert {m: (clear, sealed is not None) for m, clear, sealed in stored} == {
        alone.media_id: (None, False),
        group.media_id: (None, False),
        other.media_id: (None, True),
    }
    ids = [alone.media_id, group.media_id, other.media_id]
    assert media_keys(gateway, owner, ids) == {other.media_id}


def test_an_upload_fenced_by_an_erasure_keeps_no_file_name(gateway, studio):
    """An upload that matched the talent before the erasure and commits after it is stored as
    the scrub leaves the others: its faces TALENT_ERASED and its file name blank."""
    _, meta = studio
    hooks = Checkpoints()
    gateway.app.uploads.checkpoint = hooks
    matched = hooks.pause_at("upload.matched")
    late = Outcome(lambda: upload(gateway, meta, group_photo(), filename=NAMING), matched)
    matched.reached()
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
    matched.release()
    assert late.join().error is None
    reasons = {f.reason for f in late.result.faces}
    assert common.LABEL_REASON_TALENT_ERASED in reasons
    assert all(not f.talent_id for f in late.result.faces)
    [summary] = listing(gateway, meta)
    assert (summary.media_id, summary.filename) == (late.result.media_id, "")
    assert media_keys(gateway, studio[0], [late.result.media_id]) == set()  # none was made
    kept = upload(gateway, meta, group_photo(), filename=NAMING)  # after: nobody to link
    assert {m.media_id: m.filename for m in listing(gateway, meta)}[kept.media_id] == NAMING
