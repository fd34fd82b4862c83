"""What the gateway stores naming a talent is sealed (issue 17, finding #1): no talent id, no note,
no file name and no digest anyone could recompute in the gateway database's files or dump,
before or after an erasure; a copy of the database taken before the erasure opens nothing of
the talent once the vault rotated; an older gateway's clear rows are sealed at start-up."""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select, text

from gateway.app import GatewayApp
from gateway.projects import Action
from gateway.reviews import NewDecision
from gateway.seals import (
    ACCOUNT_SUBJECT,
    OUTBOX_CONTEXT,
    decision_digest,
    filename_context,
    media_subject,
    note_context,
)
from gateway.settings import GatewaySettings
from gateway.store import (
    AuditOutboxRow,
    Base,
    ErasureIntentRow,
    MediaFaceRow,
    MediaRow,
    ReviewDecisionRow,
    TalentKeyRow,
    VaultStateRow,
    face_context,
)
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime import migrations
from mixip.runtime.config import ADMIN_KEY_FILE
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition
from mixip.runtime.idempotency import content_digest
from mixip.runtime.vault import Vault
from tests.support import faces
from tests.support.disk import backup, database_bytes, found_in, keys_in_copy
from tests.support.gateway_calls import (
    PROJECT,
    consent,
    decide,
    enroll,
    gateway_vault,
    group_photo,
    upload,
)

APPROVED = common.REVIEW_DECISION_APPROVED_FOR_RELEASE
CLEARED = common.FACE_LABEL_CLEARED
# Tables whose live rows the old gateway could not hold (the outbox's are sealed, the jobs
# table came later).
SEALED_ONLY = {"gateway_vault_state", "gateway_talent_keys", "gateway_audit_outbox", "gateway_jobs"}
# The gateway's revision before sealing: clear talent ids, notes and queued events.
BEFORE_SEALING = "96b4df5983bf"


def matched_talent(gateway, clock) -> tuple[str, tuple, str, str, str, str]:
    """An account with a talent no test could name by accident, enrolled and matched in a
    photo with a distinctive file name whose face carries a review decision with a distinctive
    note: (account, metadata, talent, media id, note, file name)."""
    account, meta = gateway.new_account("studio")
    talent = f"talent-{secrets.token_hex(8)}"
    consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gateway, meta, talent, faces.astronaut())
    name = f"jane-doe-{secrets.token_hex(8)}-headshot.jpg"
    media = upload(gateway, meta, group_photo(), filename=name)
    [face] = [f.face_index for f in media.faces if f.talent_id == talent]
    note = f"note-{secrets.token_hex(8)} signed the release"
    decide(gateway, meta, media.media_id, face, APPROVED, note=note, request_id="review-1")
    return account, meta, talent, media.media_id, note, name


def plain_digest(db: Database, note: str) -> str:
    """The unkeyed SHA-256 an older gateway kept of the decision for retries (hex, as stored):
    anyone guessing the note could recompute it."""
    with db.read() as session:
        row = session.scalars(select(ReviewDecisionRow)).one()
    return content_digest(row.media_id, str(row.face_index), str(row.decision), note)


def test_no_talent_id_or_note_lies_in_the_gateway_database_before_or_after_an_erasure(
    gateway, clock
):
    account, meta, talent, media_id, note, name = matched_talent(gateway, clock)
    db = gateway.app.db
    # sealed from the first write: the results, the note and the queued events name no one
    gateway.app.audit_outbox.stop()
    upload(gateway, meta, group_photo())  # its audit events stay queued, sealed
    results = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
    )
    assert talent in [f.talent_id for f in results.media.faces]
    assert [d.note for d in results.decisions] == [note]
    listed = gateway.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta).media
    assert {m.media_id: m.filename for m in listed}[media_id] == name
    on_disk = database_bytes(db)
    assert found_in(on_disk, account, media_id)  # the scan reads the rows (ids in clear)
    assert found_in(on_disk, talent, note, name) == []
    with db.read() as session:  # a retry digest, keyed: not the one anybody could recompute
        assert session.scalars(select(ReviewDecisionRow.digest)).one() is not None
    assert found_in(on_disk, plain_digest(db, note)) == []

    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=talent), metadata=meta)

    on_disk = database_bytes(db)
    assert found_in(on_disk, account, media_id)
    assert found_in(on_disk, talent, note, name) == []
    results = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
    )
    assert talent not in [f.talent_id for f in results.media.faces]
    assert [d.note for d in results.decisions] == [""]
    with db.read() as session:  # the talent's key is gone (the account's stays), and the digest
        # that hashed the note for retries went with the note
        assert session.scalars(select(ReviewDecisionRow.digest)).all() == [None]
        keys = gateway.app.vault.talent_keys(
            session, account, [talent, ACCOUNT_SUBJECT, media_subject(media_id)], create=False
        )
        assert list(keys) == [ACCOUNT_SUBJECT]  # the file name's key went too
    assert gateway.app.vault.status().rotation_due_at is not None  # the erasure owes one


def opened_in_copy(
    copy: Database, vault: Vault, key_dir: Path, guess: str
) -> tuple[set[str], set[str], set[str], set[str]]:
    """(talent ids, notes, file names, notes guessed) of the copy's rows that open with the
    live vault's sealing key or with any key file the mesh holds now: "guessed" is `guess`
    when a decision's retry digest confirms it as its note."""
    keys = keys_in_copy(copy, vault, VaultStateRow, TalentKeyRow, key_dir)
    with copy.read() as session:
        media = session.scalars(select(MediaRow)).all()
        faces_ = session.scalars(select(MediaFaceRow)).all()
        decisions = session.scalars(select(ReviewDecisionRow)).all()
    talents = {
        keys[f.talent_ref].open_text(f.sealed_talent_id, face_context(f.media_id, f.face_index))
        for f in faces_
        if f.talent_ref in keys and f.sealed_talent_id
    }
    notes = {
        keys[d.note_ref].open_text(d.sealed_note, note_context(d.decision_id))
        for d in decisions
        if d.note_ref in keys and d.sealed_note
    }
    names = {
        keys[m.filename_ref].open_text(m.sealed_filename, filename_context(m.media_id))
        for m in media
        if m.filename_ref in keys and m.sealed_filename
    }
    guessed = {
        guess
        for d in decisions
        if d.note_ref in keys
        and d.digest
        == decision_digest(keys[d.note_ref], d.media_id, d.face_index, d.decision, guess)
    }
    return talents, notes, names, guessed


def test_a_copy_taken_before_an_erasure_opens_nothing_of_the_talent_after_the_rotation(
    gateway, clock, tmp_path, pg_test_database
):
    _, meta, talent, _, note, name = matched_talent(gateway, clock)
    app = gateway.app
    copy = backup(app.db, "gateway", Base.metadata, tmp_path, pg_test_database)
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=talent), metadata=meta)
    # the copy still opens with the keys the gateway holds today (else the test proves nothing)
    opened = opened_in_copy(copy, app.vault, tmp_path / "keys", note)
    assert opened == ({talent}, {note}, {name}, {note})

    clock.advance(days=1, seconds=1)
    assert app.vault.rotate_if_due() is not None  # the rotation the erasure owes

    opened = opened_in_copy(copy, app.vault, tmp_path / "keys", note)
    assert opened == (set(), set(), set(), set())
    copy.dispose()


def test_an_older_gateways_clear_rows_are_sealed_at_start_and_still_read(
    gateway, clock, backend, tmp_path, database_url
):
    """A gateway database at the revision before sealing, with a clear talent id in a result
    and an open erasure intent, a clear note with a plain retry digest, a clear file name and
    a clear queued event, is upgraded and sealed when the gateway starts; the results, the
    note, the file name and the event still read, and the decision's retry still compares."""
    account, _, talent, media_id, note, name = matched_talent(gateway, clock)
    url = database_url("gateway_old")
    migrations.upgrade(url, "gateway", BEFORE_SEALING)
    old, live = Database(url, Base.metadata), gateway.app.db
    event = audit_pb2.MatchEventInput(
        idempotency_key="legacy:0", project_id=PROJECT, media_id=media_id, talent_id=talent
    )
    clear = {  # what the old gateway kept in clear
        "gateway_media_faces": lambda row: {
            "talent_id": talent if row["label"] == CLEARED else None
        },
        "gateway_review_decisions": lambda row: {
            "note": note,
            "digest": content_digest(
                row["media_id"], str(row["face_index"]), str(row["decision"]), note
            ),
        },
        "gateway_media": lambda row: {"filename": name if row["media_id"] == media_id else ""},
    }
    with old.engine.connect() as connection:
        existed = set(inspect(connection).get_table_names())  # not the later revisions' tables
    with live.read() as source, old.write() as target:  # the live rows, as the old gateway had
        for table in Base.metadata.sorted_tables:
            if table.name in SEALED_ONLY or table.name not in existed:
                continue
            columns = [c for c in table.columns if c.name in _old_columns(old, table.name)]
            if not columns:
                continue
            rows = [dict(r) for r in source.execute(select(*columns)).mappings()]
            for row in rows:
                row.update(clear.get(table.name, lambda _: {})(row))
            if rows:
                target.execute(insert(table), rows)
        target.execute(
            insert(AuditOutboxRow.__table__).values(
                account_id=account, event=event.SerializeToString(), created_at=clock(), attempts=0
            )
        )
        target.execute(
            insert(ErasureIntentRow.__table__).values(
                intent_id="legacy-intent",
                account_id=account,
                talent_id=talent,
                talent_key=b"k" * 32,
                receipt_id="rcpt_legacy",
                created_at=clock(),
            )
        )
    old.dispose()

    restarted = GatewayApp(  # the new gateway starts on the old database
        Database(url, Base.metadata),
        gateway.app.channels,
        gateway.app.media_store,
        GatewaySettings(
            admin_key_file=tmp_path / ADMIN_KEY_FILE,
            erasure_resume_seconds=0,
            vault=gateway_vault(tmp_path / "restarted"),
        ),
        clock,
    )
    db = restarted.db  # (not closed: it shares the live gateway's channels)
    with db.read() as session:
        clear = session.execute(
            text(
                "SELECT (SELECT count(*) FROM gateway_media_faces WHERE talent_id IS NOT NULL)"
                " + (SELECT count(*) FROM gateway_review_decisions WHERE note IS NOT NULL)"
                " + (SELECT count(*) FROM gateway_audit_outbox WHERE event IS NOT NULL)"
                " + (SELECT count(*) FROM gateway_erasure_intents WHERE talent_id IS NOT NULL)"
                " + (SELECT count(*) FROM gateway_review_decisions WHERE digest IS NOT NULL)"
                " + (SELECT count(*) FROM gateway_media WHERE filename IS NOT NULL)"
            )
        ).scalar_one()
        (decision,) = session.scalars(select(ReviewDecisionRow)).all()
        names = restarted.uploads.seals.filenames(session, list(session.scalars(select(MediaRow))))
        (intent,) = session.scalars(
            select(ErasureIntentRow).where(ErasureIntentRow.intent_id == "legacy-intent")
        ).all()
        faces_ = restarted.uploads.seals.faces(session, list(session.scalars(select(MediaFaceRow))))
        (sealed_event,) = session.scalars(select(AuditOutboxRow.sealed_event)).all()
        account_key = restarted.vault.talent_keys(
            session, account, [ACCOUNT_SUBJECT], create=False
        )[ACCOUNT_SUBJECT]
    assert clear == 0
    assert talent in [f.talent_id for f in faces_]
    scope = restarted.projects.media_scope(account, media_id, Action.READ)
    assert [d.note for d in restarted.reviews.decisions(scope)] == [note]
    assert names == {media_id: name}
    retry = NewDecision(decision.face_index, decision.decision, note, "review-1")
    review = restarted.projects.media_scope(account, media_id, Action.REVIEW)
    assert restarted.reviews.decide(review, account, "k", retry).decision_id == decision.decision_id
    with pytest.raises(FailedPrecondition):
        restarted.reviews.decide(review, account, "k", replace(retry, note=note + "!"))
    assert (
        audit_pb2.MatchEventInput.FromString(account_key.open(sealed_event, OUTBOX_CONTEXT))
        == event
    )
    assert restarted.erasures.talent_of(intent) == talent
    if backend == "sqlite":  # the scrub left no clear copy in the files
        assert found_in(database_bytes(db), talent, note, name, plain_digest(db, note)) == []
    assert restarted.uploads.seals.seal_legacy(db) == 0  # idempotent
    db.dispose()


def _old_columns(db: Database, table: str) -> set[str]:
    """The table's columns in the older database (none for a table a later revision makes)."""
    with db.engine.connect() as connection:
        if not inspect(connection).has_table(table):
            return set()
        return {c["name"] for c in inspect(connection).get_columns(table)}
