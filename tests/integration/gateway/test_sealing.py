"""What the gateway stores naming a talent is sealed (issue 17, finding #1): no talent id and no
note in the gateway database's files or dump, before or after an erasure; a copy of the
database taken before the erasure opens nothing of the talent once the vault rotated; an older
gateway's clear rows are sealed at start-up."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import insert, inspect, select, text

from gateway.app import GatewayApp
from gateway.projects import Action
from gateway.seals import ACCOUNT_SUBJECT, OUTBOX_CONTEXT, note_context
from gateway.settings import GatewaySettings
from gateway.store import (
    AuditOutboxRow,
    Base,
    ErasureIntentRow,
    MediaFaceRow,
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


def matched_talent(gateway, clock) -> tuple[str, tuple, str, str, str]:
    """An account with a talent no test could name by accident, enrolled and matched in a
    photo whose face carries a review decision with a distinctive note: (account, metadata,
    talent, media id, note)."""
    account, meta = gateway.new_account("studio")
    talent = f"talent-{secrets.token_hex(8)}"
    consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gateway, meta, talent, faces.astronaut())
    media = upload(gateway, meta, group_photo())
    [face] = [f.face_index for f in media.faces if f.talent_id == talent]
    note = f"note-{secrets.token_hex(8)} signed the release"
    decide(gateway, meta, media.media_id, face, APPROVED, note=note, request_id="review-1")
    return account, meta, talent, media.media_id, note


def test_no_talent_id_or_note_lies_in_the_gateway_database_before_or_after_an_erasure(
    gateway, clock
):
    account, meta, talent, media_id, note = matched_talent(gateway, clock)
    db = gateway.app.db
    # sealed from the first write: the results, the note and the queued events name no one
    gateway.app.audit_outbox.stop()
    upload(gateway, meta, group_photo())  # its audit events stay queued, sealed
    results = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
    )
    assert talent in [f.talent_id for f in results.media.faces]
    assert [d.note for d in results.decisions] == [note]
    on_disk = database_bytes(db)
    assert found_in(on_disk, account, media_id)  # the scan reads the rows (ids in clear)
    assert found_in(on_disk, talent, note) == []
    with db.read() as session:
        assert session.scalars(select(ReviewDecisionRow.digest)).one() is not None

    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=talent), metadata=meta)

    on_disk = database_bytes(db)
    assert found_in(on_disk, account, media_id)
    assert found_in(on_disk, talent, note) == []
    results = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
    )
    assert talent not in [f.talent_id for f in results.media.faces]
    assert [d.note for d in results.decisions] == [""]
    with db.read() as session:  # the talent's key is gone (the account's stays), and the digest
        # that hashed the note for retries went with the note
        assert session.scalars(select(ReviewDecisionRow.digest)).all() == [None]
        keys = gateway.app.vault.talent_keys(
            session, account, [talent, ACCOUNT_SUBJECT], create=False
        )
        assert list(keys) == [ACCOUNT_SUBJECT]
    assert gateway.app.vault.status().rotation_due_at is not None  # the erasure owes one


def opened_in_copy(copy: Database, vault: Vault, key_dir: Path) -> tuple[set[str], set[str]]:
    """(talent ids, notes) of the copy's rows that open with the live vault's sealing key or
    with any key file the mesh holds now."""
    keys = keys_in_copy(copy, vault, VaultStateRow, TalentKeyRow, key_dir)
    with copy.read() as session:
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
    return talents, notes


def test_a_copy_taken_before_an_erasure_opens_nothing_of_the_talent_after_the_rotation(
    gateway, clock, tmp_path, pg_test_database
):
    _, meta, talent, _, note = matched_talent(gateway, clock)
    app = gateway.app
    copy = backup(app.db, "gateway", Base.metadata, tmp_path, pg_test_database)
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=talent), metadata=meta)
    # the copy still opens with the keys the gateway holds today (else the test proves nothing)
    assert opened_in_copy(copy, app.vault, tmp_path / "keys") == ({talent}, {note})

    clock.advance(days=1, seconds=1)
    assert app.vault.rotate_if_due() is not None  # the rotation the erasure owes

    assert opened_in_copy(copy, app.vault, tmp_path / "keys") == (set(), set())
    copy.dispose()


def test_an_older_gateways_clear_rows_are_sealed_at_start_and_still_read(
    gateway, clock, backend, tmp_path, database_url
):
    """A gateway database at the revision before sealing, with a clear talent id in a result
    and an open erasure intent, a clear note and a clear queued event, is upgraded and sealed
    when the gateway starts; the results, the note and the event still read."""
    account, _, talent, media_id, note = matched_talent(gateway, clock)
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
        "gateway_review_decisions": lambda row: {"note": note},
    }
    with live.read() as source, old.write() as target:  # the live rows, as the old gateway had
        for table in Base.metadata.sorted_tables:
            if table.name in SEALED_ONLY:
                continue
            columns = [c for c in table.columns if c.name in _old_columns(old, table.name)]
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
            )
        ).scalar_one()
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
    assert (
        audit_pb2.MatchEventInput.FromString(account_key.open(sealed_event, OUTBOX_CONTEXT))
        == event
    )
    assert restarted.erasures.talent_of(intent) == talent
    if backend == "sqlite":  # the scrub left no clear copy in the files
        assert found_in(database_bytes(db), talent, note) == []
    assert restarted.uploads.seals.seal_legacy(db) == 0  # idempotent
    db.dispose()


def _old_columns(db: Database, table: str) -> set[str]:
    with db.engine.connect() as connection:
        return {c["name"] for c in inspect(connection).get_columns(table)}
