"""Schema migrations (Alembic, one history per service) on SQLite and PostgreSQL: the models
match the revisions, a database made by create_all is stamped, replicas upgrading at once apply
each revision once, and a database filled by the services keeps every row through every step."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import MetaData, create_engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from gateway.store import MediaFaceRow, MediaRow
from mixip.audit.v1 import audit_pb2 as apb
from mixip.common.v1.common_pb2 import REVIEW_DECISION_APPROVED_FOR_RELEASE
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import admin_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.retention.v1 import retention_pb2 as rpb
from mixip.runtime import migrations
from mixip.runtime.db import Database, create_db_engine
from mixip.tlog.checkpoint import open_checkpoint
from mixip.tlog.note import Ed25519Verifier
from tests.support import faces
from tests.support.databases import PG_ADMIN_URL
from tests.support.gateway_calls import (
    PROJECT,
    consent,
    decide,
    enroll,
    finished_job,
    group_photo,
    invite,
    start_job,
    upload,
)

SERVICES = list(migrations.MODELS)
# Columns sealed under per-talent keys: a downgrade past the revision that made them drops them
# (it cannot unseal what they hold into the clear column it leaves NULL, or blank), so their
# values do not come back up.
SEALED_COLUMNS = {
    "consent": {"talent_ref", "sealed_talent_id"},
    "gateway": {"filename", "filename_ref", "sealed_filename", "keyed_digest"},
}

# A revision whose downgrade cannot keep what the service sealed after it (the keys are the
# service's, not the migration's): the walk below stops there. Its upgrade from clear rows is
# tested with the service (tests/integration/gateway/test_sealing.py).
SEALED_AT = {"gateway": "eaf57bb405d5"}


@pytest.fixture
def database_url(database_url):
    """Every service database of the test starts at its service's first revision (the services
    upgrade it to head when they start); `made` remembers them."""

    def make(service: str) -> str:
        url = database_url(service)
        migrations.upgrade(url, service, migrations.revisions(service)[0])
        make.made[service] = url
        return url

    make.made = {}
    return make


def tables(url: str, service: str) -> dict[str, set[tuple]]:
    """Every row of every table the service owns (its version table and the retention
    replicas' job stores left out), each row as sorted (column, value) pairs."""
    engine = create_engine(create_db_engine(url).url, poolclass=NullPool)
    ignored = migrations.NOT_OURS.get(service) or "\0"
    with engine.connect() as connection:
        reflected = MetaData()
        reflected.reflect(
            connection,
            only=lambda name, _: name != "alembic_version" and not name.startswith(ignored),
        )
        contents = {
            name: {tuple(sorted(row._mapping.items())) for row in connection.execute(select(table))}
            for name, table in reflected.tables.items()
        }
    engine.dispose()
    return contents


def kept(before: dict[str, set[tuple]], after: dict[str, set[tuple]]) -> list[str]:
    """What `after` lost of `before`: tables, rows, or values of columns both still have."""
    lost = []
    for name, rows in before.items():
        if name not in after:
            lost.append(f"table {name}")
            continue
        columns = {c for row in after[name] for c, _ in row} & {c for row in rows for c, _ in row}
        old = {tuple((c, v) for c, v in row if c in columns) for row in rows}
        new = {tuple((c, v) for c, v in row if c in columns) for row in after[name]}
        if len(after[name]) < len(rows) or not old <= new:
            lost.append(f"rows of {name}")
    return lost


@pytest.mark.parametrize("service", SERVICES)
def test_the_models_match_the_migrations_at_head(database_url, service):
    url = database_url(service)
    assert migrations.upgrade(url, service) == migrations.revisions(service)[1:]
    assert migrations.drift(url, service) == []
    assert migrations.upgrade(url, service) == []  # at head: nothing to apply


def test_a_schema_change_without_a_revision_is_drift(database_url):
    url = database_url("consent")
    migrations.upgrade(url, "consent")
    engine = create_db_engine(url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE consent_records ADD COLUMN note VARCHAR(20)"))
        connection.execute(text("DROP INDEX ix_consent_outbox_due"))
    engine.dispose()
    changes = migrations.drift(url, "consent")
    assert [(c[2], c[3].name) for c in changes if c[0] == "remove_column"] == [
        ("consent_records", "note")
    ]
    assert "ix_consent_outbox_due" in [c[1].name for c in changes if c[0] == "add_index"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_database_made_before_migrations_is_stamped_not_made_again(database_url, service):
    url = database_url(service)  # the first revision is the schema create_all used to make
    engine = create_db_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))  # as before migrations
        connection.execute(text(f"CREATE TABLE {service}_marker (id INTEGER PRIMARY KEY)"))

    history = migrations.revisions(service)
    assert migrations.upgrade(url, service) == history[1:]  # the first is stamped, not run
    with engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert version == [(history[-1],)]
    assert [(c[0], c[1].name) for c in migrations.drift(url, service)] == [
        ("remove_table", f"{service}_marker")  # a table of ours, not the service's: kept
    ]


@pytest.mark.skipif(not PG_ADMIN_URL, reason="needs PostgreSQL (MIXIP_TEST_DATABASE_URL)")
@pytest.mark.parametrize("backend", ["postgresql"])
def test_replicas_upgrading_at_once_apply_each_revision_once(database_url, backend):
    url = create_db_engine(database_url("audit")).url.render_as_string(hide_password=False)
    first = migrations.revisions("audit")[0]
    engine = create_engine(url, poolclass=NullPool)
    holder = engine.connect()
    # Back to an empty schema, then hold the migration lock so both replicas must queue on it.
    migrations.downgrade(url, "audit", "base")
    holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": migrations.LOCK_KEY})
    waiting = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND objid = :key AND database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database())"
    )
    with ThreadPoolExecutor(2) as pool:
        replicas = [pool.submit(migrations.upgrade, url, "audit") for _ in range(2)]
        deadline = time.monotonic() + 30
        with engine.connect() as observer:
            while observer.execute(waiting, {"key": migrations.LOCK_KEY}).scalar() < 2:
                assert time.monotonic() < deadline, "the replicas never queued on the lock"
                assert not any(r.done() for r in replicas), [r.result() for r in replicas]
                threading.Event().wait(0.01)
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": migrations.LOCK_KEY})
        applied = sorted(r.result(timeout=60) for r in replicas)
    holder.close()
    assert applied == [[], migrations.revisions("audit")]
    assert first in applied[1]
    assert migrations.drift(url, "audit") == []
    engine.dispose()


def fill_every_service(
    gateway, retention_factory, clock
) -> tuple[tuple, str, apb.GetCheckpointRequest, str]:
    """Rows in every service's tables, written the way clients write them: the account's call
    metadata, the id of its matched photo, and the request of its log's checkpoint and the
    checkpoint signed."""
    # The gateway's audit outbox delivers only when told (the erasure below delivers the first
    # photo's events, a drain the second's; the third photo's stay queued: an outbox row).
    gateway.app.audit_outbox.stop()
    gateway.app.webhook_deliverer.stop()  # the erasure's webhook delivery stays owed: a row
    account, meta = gateway.new_account("studio")
    gateway.stub.AddWebhook(pb.AddWebhookRequest(url="https://hooks.example.com/x"), metadata=meta)
    for talent, image in (("astronaut", faces.astronaut()), ("hopper", faces.grace_hopper())):
        consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
        consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
        enroll(gateway, meta, talent, image)
    media_id = upload(gateway, meta, group_photo(), request_id="up-1").media_id
    crew, _ = gateway.new_account("crew")
    gone, _ = gateway.new_account("gone")  # closed: its closure's receipt is a row
    closing = admin_pb2.CloseAccountRequest(account_id=gone)
    gateway.admin.CloseAccount(closing, metadata=gateway.admin_metadata())
    invite(gateway, meta, crew, pb.PROJECT_ROLE_REVIEWER)
    decide(gateway, meta, media_id, 0, REVIEW_DECISION_APPROVED_FOR_RELEASE)
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="hopper"), metadata=meta)
    clock.advance(days=400)  # the first photo's audit events expire: the purge checkpoints them
    upload(gateway, meta, group_photo(), request_id="up-2")
    gateway.app.audit_outbox.drain(account)
    upload(gateway, meta, group_photo(), request_id="up-3")
    consent(
        gateway,
        meta,
        clock,
        "astronaut",
        cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
        decision=cpb.CONSENT_DECISION_REVOKED,
    )  # an outbox row: the test's consent service does not dispatch
    retention = retention_factory(
        audit=gateway.audit.address,
        matcher=gateway.mesh.matcher.address,
        consent=gateway.mesh.consent.address,
    )
    report = retention.stub.RunNow(rpb.RunNowRequest(job=rpb.RETENTION_JOB_PURGE)).report
    assert report.events_purged == 3  # the first photo's two faces and the decision
    job = start_job(gateway, meta, group_photo(), request_id="up-4")  # an ended job's row
    assert finished_job(gateway, meta, job.job_id).state == pb.JOB_STATE_DONE
    clip = faces.make_video(None, [(faces.astronaut(), 1.0)])  # a video job's segment row
    video_job = start_job(gateway, meta, clip, request_id="up-5")
    assert finished_job(gateway, meta, video_job.job_id).state == pb.JOB_STATE_DONE
    # A resumable upload under way: its session, with a part of the photo in.
    photo = group_photo()
    session = gateway.stub.CreateUploadSession(
        pb.CreateUploadSessionRequest(project_id=PROJECT, declared_size=len(photo)), metadata=meta
    ).session
    part = pb.AppendUploadChunksRequest(
        session_id=session.session_id, offset=0, data=photo[:100_000]
    )
    gateway.stub.AppendUploadChunks(iter([part]), metadata=meta)
    # a signed checkpoint of the tree after the purge (asked of audit itself: through the
    # gateway, the third photo's queued events would be delivered first)
    asked = apb.GetCheckpointRequest(account_id=account)
    checkpoint = gateway.audit.stub.GetCheckpoint(asked).checkpoint
    gateway.app.access_writer.flush()  # the calls' access-log entries are in their table
    return meta, media_id, asked, checkpoint


def test_every_database_filled_by_the_services_keeps_every_row_through_every_revision(
    gateway, retention_factory, database_url, clock
):
    meta, media_id, asked, checkpoint = fill_every_service(gateway, retention_factory, clock)
    assert sorted(database_url.made) == sorted(SERVICES)
    for service, url in database_url.made.items():
        history = migrations.revisions(service)
        at_head = tables(url, service)
        empty = [name for name, rows in at_head.items() if not rows]
        # Tables the fill leaves empty: the test's consent service does not dispatch (no
        # delivery counts), the vault keeps its keys in audit_vault_state now, no account has
        # its own retention.
        left_empty = {
            "gateway": ["gateway_account_retention"],
            "retention": ["retention_ticks"],
            "consent": ["consent_outbox_delivery_counts"],
            "audit": ["audit_vault_keys"],
        }
        assert empty == left_empty.get(service, []), service
        floor = history.index(SEALED_AT[service]) if service in SEALED_AT else 0
        for revision in reversed(history[floor:-1]):  # back to the first revision, step by step
            migrations.downgrade(url, service, revision)
        at_first = tables(url, service)
        for revision in history[floor + 1 :]:  # then up again, one revision at a time
            assert migrations.upgrade(url, service, revision) == [revision]
            assert kept(at_first, tables(url, service)) == [], (service, revision)
        assert migrations.upgrade(url, service) == []
        # Rows of tables that a later revision creates go with that revision's downgrade, and
        # sealed rows with the revision that sealed them: a downgrade holds no key, so it
        # cannot write their talent ids back in clear (the matcher deletes its sealed faces);
        # the values of sealed columns go too (consent drops them).
        sealed = {"matcher": {"matcher_faces"}}.get(service, set())
        unsealable = SEALED_COLUMNS.get(service, set())
        older = {
            name: {tuple((c, v) for c, v in row if c not in unsealable) for row in rows}
            for name, rows in at_head.items()
            if name in at_first and name not in sealed
        }
        assert kept(older, tables(url, service)) == [], service
        if service == "gateway":  # the projects revision makes the media's projects again
            again = tables(url, service)["gateway_projects"]
            assert again == at_head["gateway_projects"] and again

    # The services still read what they wrote.
    results = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
    )
    assert sorted(f.talent_id for f in results.media.faces) == ["", "astronaut"]
    # The audit service's own verification: through the gateway, the gateway's queued event
    # (its outbox is not walked below the sealing revision) would be delivered first, and the
    # audit's vault state went with the walk of the revision that made it.
    assert gateway.audit.stub.VerifyLog(apb.VerifyLogRequest()).ok
    # The signed checkpoint went with the downgrade of the revision that made its table, and
    # the tree with its own: rebuilt by its upgrade from the events left (the three purged are
    # not in it), the tree is signed again under the same key.
    key = gateway.audit.stub.GetLogPublicKey(
        apb.GetLogPublicKeyRequest(account_id=asked.account_id)
    ).verifier_key
    signed = [
        open_checkpoint(note, Ed25519Verifier.from_vkey(key)).checkpoint
        for note in (checkpoint, gateway.audit.stub.GetCheckpoint(asked).checkpoint)
    ]
    assert [c.size for c in signed] == [5, 2]


# A second gateway revision that makes SQLite copy gateway_media, the table gateway_media_faces
# references with ON DELETE CASCADE.
COPYING_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "copies_media"
down_revision = {head!r}


def upgrade() -> None:
    with op.batch_alter_table("gateway_media") as batch_op:
        batch_op.alter_column("filename", type_=sa.String(300), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("gateway_media") as batch_op:
        batch_op.alter_column("filename", type_=sa.String(255), existing_nullable=False)
"""


def with_revision_after_head(tmp_path, monkeypatch, service: str, source: str) -> None:
    """The service's history plus one revision `source` (its {head} filled in) after head."""
    versions = tmp_path / f"{service}-migrations"
    shutil.copytree(
        migrations.versions_dir(service), versions, ignore=shutil.ignore_patterns("__pycache__")
    )
    (versions / "extra.py").write_text(source.format(head=migrations.revisions(service)[-1]))
    monkeypatch.setattr(migrations, "versions_dir", lambda _: versions)


def test_a_revision_that_copies_a_table_keeps_the_rows_that_reference_it(
    database_url, tmp_path, monkeypatch, clock
):
    first = migrations.revisions("gateway")[0]
    with_revision_after_head(tmp_path, monkeypatch, "gateway", COPYING_REVISION)
    url = database_url("gateway")  # at the first revision
    db = Database(url, migrations.metadata("gateway"))
    with db.write() as session:
        # the columns of the first revision only (the model has more now)
        session.execute(
            insert(MediaRow).values(
                media_id="m1",
                account_id="a1",
                project_id=PROJECT,
                legacy_filename="a.jpg",
                content_type="image/jpeg",
                kind=1,
                size_bytes=10,
                storage_key="k1",
                created_at=clock(),
            )
        )
        session.execute(
            insert(MediaFaceRow.__table__),  # the first revision's columns only
            [
                {
                    "media_id": "m1",
                    "account_id": "a1",
                    "face_index": i,
                    "label": 1,
                    "reason": 1,
                    "similarity": 0.9,
                    "box": "0,0,1,1",
                    "detection_score": 0.9,
                    "best_frame_seconds": 0.0,
                    "ranges": "",
                }
                for i in range(2)
            ],
        )
    before = tables(url, "gateway")

    assert migrations.upgrade(url, "gateway")[-1:] == ["copies_media"]
    assert kept(before, tables(url, "gateway")) == []
    migrations.downgrade(url, "gateway", first)
    assert kept(before, tables(url, "gateway")) == []
    db.dispose()


FAILING_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "fails_half_way"
down_revision = {head!r}


def upgrade() -> None:
    op.create_table("audit_half_way", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO audit_half_way (id) VALUES (1)")
    op.execute("INSERT INTO audit_half_way (id) VALUES (1)")  # a duplicate key: it fails here


def downgrade() -> None:
    op.drop_table("audit_half_way")
"""


def test_a_revision_failing_half_way_leaves_the_database_as_it_was(
    database_url, tmp_path, monkeypatch
):
    url = database_url("audit")
    assert migrations.upgrade(url, "audit") == migrations.revisions("audit")[1:]
    head = migrations.revisions("audit")[-1]
    with_revision_after_head(tmp_path, monkeypatch, "audit", FAILING_REVISION)
    with pytest.raises(IntegrityError):
        migrations.upgrade(url, "audit")
    engine = create_db_engine(url)
    with engine.connect() as connection:
        assert "audit_half_way" not in inspect(connection).get_table_names()
        version = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert version == [(head,)]
