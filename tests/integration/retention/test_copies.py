"""A retention rule for every copy (docs/retention.md): each test moves the clock (or runs a
drill `as_of` a later date) and checks the copy is gone.

- gateway results and stored media: deleted by the retention purge after the account's period
  (here through the whole mesh, and on the local store and S3 under moto);
- delivered outbox rows: deleted on delivery, a per-account/day count kept;
- erasure receipts: kept, and they hold no talent id;
- the gateway's access log: entries older than 90 days deleted by the retention purge;
- audit events: `test_retention_service.py::
  test_a_purge_deletes_events_older_than_the_period_and_the_log_still_verifies`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from moto import mock_aws
from sqlalchemy import func, insert, select

from gateway.access_log import AccessLog
from gateway.access_recording import AccessLogWriter
from gateway.app import INTERNAL_SERVICE, InternalApp, internal_security
from gateway.jobs import JobPurge
from gateway.media_store import LocalEncryptedStore, S3Store
from gateway.peers import RetentionClient
from gateway.retention import MediaRetention
from gateway.seals import Seals
from gateway.store import (
    AccessLogRow,
    ErasureReceiptRow,
    MediaFaceRow,
    MediaRow,
    TalentKeyRow,
    VaultStateRow,
)
from gateway.store import Base as GatewayBase
from gateway.uploads import OrphanSweep
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import admin_pb2, internal_pb2, internal_pb2_grpc
from mixip.gateway.v1 import gateway_pb2 as gpb
from mixip.retention.v1 import retention_pb2 as pb
from mixip.runtime import acl
from mixip.runtime.client import open_channel
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.times import to_timestamp
from mixip.runtime.tls import channel_credentials, init_certs, server_credentials
from services.consent.store import DeliveryCountRow, OutboxRow, TombstoneRow
from services.retention.store import RunDetailRow
from tests.support import faces
from tests.support.gateway_calls import consent, enroll, gateway_vault, group_photo, upload
from tests.support.status import expect_error, expect_invalid

PURGE, RECONCILE = pb.RETENTION_JOB_PURGE, pb.RETENTION_JOB_RECONCILE
SUCCEEDED, FAILED = pb.RUN_OUTCOME_SUCCEEDED, pb.RUN_OUTCOME_FAILED
TALENT = "astronaut-7f3a"  # distinctive, so a search for it cannot hit by accident
BIO = cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING


def count(db, table) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(table))


def every_value(db, table) -> list[str]:
    with db.read() as session:
        return [repr(v) for row in session.execute(select(table.__table__)) for v in row]


# -- the whole mesh: gateway + audit + consent + matcher + retention ---------------------------


@pytest.fixture
def retention(gateway, retention_factory):
    """A retention service on the gateway's peers that reaches the gateway's internal port; the
    gateway's RunRetentionJob passes through to it."""
    handle = retention_factory(
        audit=gateway.audit.address,
        matcher=gateway.mesh.matcher.address,
        consent=gateway.mesh.consent.address,
        gateway=f"127.0.0.1:{gateway.app.internal.port}",
    )
    gateway.app.operations.retention = RetentionClient(handle.channel)
    return handle


def admin_key_id(gateway) -> str:
    return gateway.app.admin_key.split("_")[1]


def run_purge(gateway, as_of: datetime | None = None) -> pb.RunReport:
    return gateway.admin.RunRetentionJob(
        admin_pb2.RunRetentionJobRequest(job=PURGE, as_of=to_timestamp(as_of)),
        metadata=gateway.admin_metadata(),
    ).report


def media_objects(gateway) -> set[str]:
    root = gateway.app.media_store.root
    return {p.name for p in root.rglob("*") if p.is_file()}


def test_stored_results_and_media_go_after_their_accounts_period_and_in_a_drill(
    gateway, retention, clock
):
    studio, meta = gateway.new_account("studio")
    brief, brief_meta = gateway.new_account("brief")
    consent(gateway, meta, clock, TALENT, BIO)
    enroll(gateway, meta, TALENT, faces.astronaut())
    set_reply = gateway.admin.SetAccountRetention(
        admin_pb2.SetAccountRetentionRequest(account_id=brief, retention_days=30),
        metadata=gateway.admin_metadata(),
    )
    assert set_reply.retention_days == 30 and set_reply.updated_at == to_timestamp(clock())
    kept = upload(gateway, meta, group_photo())
    assert TALENT in {f.talent_id for f in kept.faces}  # a link in clear, until it expires
    short = upload(gateway, brief_meta, group_photo())
    assert len(media_objects(gateway)) == 2
    for account in (studio, brief):  # delivered within seconds, before the clock jumps a month
        gateway.app.audit_outbox.drain(account)

    clock.advance(days=30)  # exactly the brief period: nothing has passed it yet
    assert run_purge(gateway).media_purged == 0
    clock.advance(days=1)
    report = run_purge(gateway)

    assert report.outcome == SUCCEEDED and report.media_purged == 1
    assert report.media_objects_deleted == 1 and report.as_of == to_timestamp(clock())
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        gpb.GetMediaResultsRequest(media_id=short.media_id),
        metadata=brief_meta,
    )
    still = gateway.stub.GetMediaResults(
        gpb.GetMediaResultsRequest(media_id=kept.media_id), metadata=meta
    )
    assert len(still.media.faces) == 2 and len(media_objects(gateway)) == 1

    # A drill a year ahead: the studio's media passes the default 365 days; the clock stays.
    drill_at = clock() + timedelta(days=335)
    report = run_purge(gateway, as_of=drill_at)

    assert report.outcome == SUCCEEDED and report.media_purged == 1
    assert report.as_of == to_timestamp(drill_at) and report.started_at == to_timestamp(clock())
    assert report.cutoff == to_timestamp(drill_at - timedelta(days=365))
    assert report.requested_by == admin_key_id(gateway)
    assert report.events_purged == 4  # the audit events of both uploads, 366 days old then
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        gpb.GetMediaResultsRequest(media_id=kept.media_id),
        metadata=meta,
    )
    db = gateway.app.db
    assert count(db, MediaRow) == count(db, MediaFaceRow) == 0
    assert media_objects(gateway) == set()
    assert not any(TALENT in v for v in every_value(db, MediaFaceRow))
    # the run record says who ran the drill and as of when
    [latest, *_] = retention.stub.ListRuns(pb.ListRunsRequest(job=PURGE)).runs
    assert latest.run_id == report.run_id and latest.requested_by == admin_key_id(gateway)
    assert latest.as_of == to_timestamp(drill_at)
    with retention.app.db.read() as session:
        detail = session.get(RunDetailRow, report.run_id)
    assert detail.requested_by == admin_key_id(gateway) and detail.as_of == drill_at
    assert run_purge(gateway, as_of=drill_at).media_purged == 0  # idempotent


def test_a_scheduled_style_run_without_a_drill_records_no_requester(retention, clock):
    report = retention.stub.RunNow(pb.RunNowRequest(job=PURGE)).report
    assert report.outcome == SUCCEEDED and report.requested_by == ""
    assert report.as_of == to_timestamp(clock())
    reconcile = retention.stub.RunNow(pb.RunNowRequest(job=RECONCILE)).report
    assert not reconcile.HasField("as_of")


def test_erasure_receipts_are_kept_and_hold_no_talent_id(gateway, clock):
    _, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, TALENT, BIO)
    enroll(gateway, meta, TALENT, faces.astronaut())
    upload(gateway, meta, group_photo())
    erased = gateway.stub.EraseTalent(
        gpb.EraseTalentRequest(talent_id=TALENT, request_id="erase-1"), metadata=meta
    )
    clock.advance(days=3650)  # receipts have no expiry: still there ten years on

    assert count(gateway.app.db, ErasureReceiptRow) == 1
    values = every_value(gateway.app.db, ErasureReceiptRow)
    assert any(erased.receipt_id in v for v in values)
    assert not any(TALENT in v for v in values)
    tombstones = every_value(gateway.mesh.consent.app.db, TombstoneRow)
    assert tombstones and not any(TALENT in v for v in tombstones)


# -- the gateway's purge alone, on each media store --------------------------------------------


class Store:
    """The media store of a test, and a way to list what it holds."""

    def __init__(self, store, listing) -> None:
        self.store, self.listing = store, listing


@pytest.fixture(params=["local", "s3"])
def media_store(request, tmp_path, aws_credentials):
    if request.param == "local":
        local = LocalEncryptedStore(tmp_path / "media", LocalKeyWrapper(tmp_path / "kek.key"))
        yield Store(local, lambda: {p.name for p in local.root.rglob("*") if p.is_file()})
        return
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        key_id = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
        s3.create_bucket(
            Bucket="media", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )

        def listing() -> set[str]:
            page = s3.list_objects_v2(Bucket="media")
            return {item["Key"].rsplit("/", 1)[1] for item in page.get("Contents", [])}

        yield Store(S3Store(s3, "media", key_id), listing)


class Recording:
    """The store, checking at each deletion that no media row still refers to the object, and
    failing the next deletions when told to (a purge that stops between its two steps)."""

    def __init__(self, store, db) -> None:
        self.inner, self.db = store, db
        self.description = store.description
        self.fail_deletes = 0
        self.dangling: list[str] = []
        self.before_delete = None  # a hook run once, at the first deletion

    def put(self, account_id, data):
        return self.inner.put(account_id, data)

    def get(self, account_id, key):
        return self.inner.get(account_id, key)

    def stale_keys(self, before):
        return self.inner.stale_keys(before)

    def delete(self, account_id, key):
        hook, self.before_delete = self.before_delete, None
        if hook is not None:
            hook()
        with self.db.read() as session:
            if session.scalar(select(MediaRow.media_id).where(MediaRow.storage_key == key)):
                self.dangling.append(key)
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise OSError("the store is unreachable")
        self.inner.delete(account_id, key)


@pytest.fixture
def gateway_purge(
    media_store, database_url, serve, clock, retention_factory, retention_peers, tmp_path
):
    """The gateway's database, media store and internal port (a real server), and a retention
    service that reaches it."""
    db = Database(database_url("gateway"), GatewayBase.metadata)
    db.create_tables()
    store = Recording(media_store.store, db)
    vault = gateway_vault(tmp_path).open(
        db, clock, name="gateway", state_model=VaultStateRow, secret_model=TalentKeyRow
    )
    # No upload session is ever opened here (tests/integration/gateway/test_upload_sessions.py
    # purges them through the gateway): none to purge.
    retention = MediaRetention(
        db,
        store,
        clock,
        OrphanSweep(db, store, clock).sweep,
        Seals(vault),
        lambda as_of, limit: 0,
        JobPurge(db, 30),
    )
    access_log = AccessLog(db, AccessLogWriter(db))
    internal = serve(InternalApp(retention, access_log))
    handle = retention_factory(**retention_peers, gateway=f"127.0.0.1:{internal.port}")
    handle.db, handle.store, handle.listing = db, store, media_store.listing
    handle.internal = internal
    return handle


def stored_media(env, account: str, created_at: datetime, talent: str = TALENT) -> str:
    """A media row with one face result naming `talent`, and its stored object."""
    key = env.store.put(account, b"media bytes")
    media_id = f"med_{key[:12]}"
    with env.db.write() as session:
        session.execute(
            insert(MediaRow).values(
                media_id=media_id,
                account_id=account,
                project_id="p",
                content_type="image/jpeg",
                kind=1,
                size_bytes=11,
                storage_key=key,
                engine="local",
                duration_seconds=0.0,
                created_at=created_at,
            )
        )
        session.execute(
            insert(MediaFaceRow).values(
                media_id=media_id,
                face_index=0,
                account_id=account,
                label=2,
                reason=1,
                similarity=0.9,
                talent_id=talent,
                box="1,2,3,4",
                detection_score=0.9,
            )
        )
    return key


def test_expired_media_and_their_objects_go_from_the_store_in_bounded_batches(gateway_purge, clock):
    env = gateway_purge
    old = [stored_media(env, "acct-a", clock()) for _ in range(3)]
    clock.advance(days=200)
    recent = stored_media(env, "acct-a", clock())
    assert env.listing() == {*old, recent}

    stub = internal_pb2_grpc.GatewayInternalServiceStub(
        open_channel(f"127.0.0.1:{env.internal.port}", [INTERNAL_SERVICE], timeout_seconds=30)
    )
    as_of = to_timestamp(clock() + timedelta(days=200))  # 400 and 200 days after the uploads
    first = stub.PurgeExpiredMedia(internal_pb2.PurgeExpiredMediaRequest(as_of=as_of, batch_size=2))
    assert (first.media_deleted, first.faces_deleted, first.objects_deleted) == (2, 2, 2)
    assert not first.done
    report = env.stub.RunNow(pb.RunNowRequest(job=PURGE, as_of=as_of)).report

    assert report.outcome == SUCCEEDED and report.media_purged == 1
    assert env.listing() == {recent} and count(env.db, MediaRow) == 1
    assert env.store.dangling == []  # every object went after its row
    assert not any(TALENT in v for v in every_value(env.db, MediaRow))


def test_a_second_purge_between_the_first_ones_rows_and_objects_deletes_nothing_twice(
    gateway_purge, clock
):
    """Two purges (two retention replicas, or a drill during the daily run), interleaved at the
    step boundary: the second runs whole after the first deleted its rows and before it deleted
    the first object."""
    env = gateway_purge
    keys = {stored_media(env, "acct-a", clock()) for _ in range(3)}
    stub = internal_pb2_grpc.GatewayInternalServiceStub(
        open_channel(f"127.0.0.1:{env.internal.port}", [INTERNAL_SERVICE], timeout_seconds=30)
    )
    request = internal_pb2.PurgeExpiredMediaRequest(
        as_of=to_timestamp(clock() + timedelta(days=366))
    )
    second = []
    env.store.before_delete = lambda: second.append(stub.PurgeExpiredMedia(request))

    first = stub.PurgeExpiredMedia(request)

    assert first.media_deleted == first.faces_deleted == 3 and first.objects_deleted == 3
    [inner] = second
    assert (inner.media_deleted, inner.objects_deleted, inner.orphans_deleted) == (0, 0, 0)
    assert inner.done  # the objects still there are too fresh to be taken for orphans
    assert keys and env.listing() == set()
    assert env.store.dangling == []
    assert stub.PurgeExpiredMedia(request).done


def test_a_purge_stopped_between_rows_and_objects_leaves_an_orphan_the_next_purge_sweeps(
    gateway_purge, clock
):
    env = gateway_purge
    key = stored_media(env, "acct-a", clock())
    env.store.fail_deletes = 1
    as_of = clock() + timedelta(days=366)

    failed = env.stub.RunNow(pb.RunNowRequest(job=PURGE, as_of=to_timestamp(as_of))).report

    assert failed.outcome == FAILED and failed.error == "gateway.PurgeExpiredMedia: INTERNAL"
    assert count(env.db, MediaRow) == count(env.db, MediaFaceRow) == 0  # no row points at it
    assert env.listing() == {key}  # the orphan: unreadable, since nothing refers to it
    assert env.store.dangling == []

    # An orphan is swept once older than any upload can take (objects carry real times).
    clock.now = datetime.now(UTC) + timedelta(hours=2)
    swept = env.stub.RunNow(pb.RunNowRequest(job=PURGE)).report

    assert swept.outcome == SUCCEEDED and swept.media_objects_deleted == 1
    assert env.listing() == set()


def test_an_account_period_applies_to_that_account_only(gateway_purge, clock):
    from gateway.store import AccountRetentionRow, AccountRow

    env = gateway_purge
    with env.db.write() as session:
        session.add(AccountRow(account_id="acct-b", name="b", created_at=clock()))
        session.flush()
        session.add(
            AccountRetentionRow(
                account_id="acct-b", retention_days=10, updated_at=clock(), updated_by="k"
            )
        )
    a, b = stored_media(env, "acct-a", clock()), stored_media(env, "acct-b", clock())
    clock.advance(days=11)

    report = env.stub.RunNow(pb.RunNowRequest(job=PURGE)).report

    assert report.media_purged == 1 and env.listing() == {a}
    assert b not in env.listing()


# -- consent outbox ------------------------------------------------------------------------------


def record(consent_service, clock, decision) -> None:
    consent_service.stub.RecordConsent(
        cpb.RecordConsentRequest(
            account_id="acct-a",
            talent_id=TALENT,
            scope=BIO,
            decision=decision,
            evidence=cpb.Evidence(
                method="m", policy_version="v", actor="a", captured_at=to_timestamp(clock())
            ),
        )
    )


def test_a_delivered_face_deletion_leaves_a_count_and_no_talent_id(
    consent_factory, matcher_double, clock
):
    service = consent_factory(matcher_double.address)
    record(service, clock, cpb.CONSENT_DECISION_GRANTED)
    record(service, clock, cpb.CONSENT_DECISION_REVOKED)
    with service.app.db.read() as session:  # owed: it names the talent, sealed, never in clear
        [owed] = session.scalars(select(OutboxRow)).all()
        key = service.app.vault.talent_keys(session, "acct-a", [TALENT], create=False)[TALENT]
    assert owed.talent_ref == key.ref
    assert not any(TALENT in v for v in every_value(service.app.db, OutboxRow))
    clock.advance(minutes=1)

    assert service.app.outbox.run_once() == 1

    db = service.app.db
    assert count(db, OutboxRow) == 0
    with db.read() as session:
        [counted] = session.scalars(select(DeliveryCountRow)).all()
    assert (counted.account_id, counted.day, counted.deliveries) == (
        "acct-a",
        clock().date(),
        1,
    )
    assert not any(TALENT in v for v in every_value(db, DeliveryCountRow))


def test_rows_kept_delivered_by_an_older_version_become_counts_at_start_up(
    consent_factory, matcher_double, clock
):
    service = consent_factory(matcher_double.address)
    with service.app.db.write() as session:
        for n in range(2):
            session.add(
                OutboxRow(
                    outbox_id=f"old-{n}",
                    account_id="acct-a",
                    legacy_talent_id=TALENT,  # an older version kept it in clear
                    created_at=clock(),
                    attempts=1,
                    next_attempt_at=clock(),
                    delivered_at=clock(),
                    faces_deleted=2,
                )
            )
    service.running.stop(0)
    service.app.close()
    clock.advance(days=1)

    restarted = consent_factory(matcher_double.address)

    db = restarted.app.db
    assert count(db, OutboxRow) == 0
    with db.read() as session:
        [counted] = session.scalars(select(DeliveryCountRow)).all()
    assert (counted.deliveries, counted.faces_deleted) == (2, 4)
    assert counted.day == (clock() - timedelta(days=1)).date()  # the day each was delivered


# -- bad input, callers ----------------------------------------------------------------------------


def past(clock, **delta) -> Timestamp:
    return to_timestamp(clock() - timedelta(**delta))


@pytest.mark.parametrize(
    ("job", "as_of"),
    [
        (PURGE, lambda clock: past(clock, days=1)),
        (PURGE, lambda clock: to_timestamp(clock() + timedelta(days=36600))),
        (PURGE, lambda clock: Timestamp(seconds=1, nanos=-1)),
        (RECONCILE, lambda clock: to_timestamp(clock() + timedelta(days=1))),
    ],
    ids=["past", "beyond-100-years", "bad-nanos", "not-a-purge"],
)
def test_run_now_refuses_a_bad_as_of_and_runs_nothing(retention_service, clock, job, as_of):
    expect_invalid(
        retention_service.stub.RunNow,
        pb.RunNowRequest(job=job, as_of=as_of(clock)),
        fields={"as_of"},
    )
    assert list(retention_service.stub.ListRuns(pb.ListRunsRequest()).runs) == []


def test_run_now_refuses_an_unprintable_requester(retention_service):
    expect_invalid(
        retention_service.stub.RunNow,
        pb.RunNowRequest(job=PURGE, requested_by="a\x00b"),
        fields={"requested_by"},
    )


def test_the_admin_calls_refuse_bad_input_and_unknown_accounts(gateway, clock):
    meta = gateway.admin_metadata()
    details = expect_invalid(
        gateway.admin.RunRetentionJob,
        admin_pb2.RunRetentionJobRequest(job=PURGE, as_of=past(clock, hours=1)),
        fields={"as_of"},
        metadata=meta,
    )
    assert "past" in details.violations[0].description
    expect_invalid(
        gateway.admin.SetAccountRetention,
        admin_pb2.SetAccountRetentionRequest(account_id="", retention_days=0),
        fields={"account_id", "retention_days"},
        metadata=meta,
    )
    expect_invalid(
        gateway.admin.SetAccountRetention,
        admin_pb2.SetAccountRetentionRequest(account_id="acct_x", retention_days=3651),
        fields={"retention_days"},
        metadata=meta,
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.admin.SetAccountRetention,
        admin_pb2.SetAccountRetentionRequest(account_id="acct_none", retention_days=30),
        metadata=meta,
    )
    _, account_meta = gateway.new_account()
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.admin.SetAccountRetention,
        admin_pb2.SetAccountRetentionRequest(account_id="acct_none", retention_days=30),
        metadata=account_meta,
    )


def test_purge_expired_media_refuses_a_request_without_a_time_or_with_a_huge_batch(gateway):
    stub = internal_pb2_grpc.GatewayInternalServiceStub(
        open_channel(
            f"127.0.0.1:{gateway.app.internal.port}", [INTERNAL_SERVICE], timeout_seconds=10
        )
    )
    expect_invalid(
        stub.PurgeExpiredMedia,
        internal_pb2.PurgeExpiredMediaRequest(batch_size=10_001),
        fields={"as_of", "batch_size"},
    )


def test_only_the_retention_service_may_call_the_gateways_internal_port(
    gateway, serve, tmp_path_factory
):
    certs = init_certs(tmp_path_factory.mktemp("tls"))[0].parent
    running = serve(
        InternalApp(gateway.app.retention, gateway.app.access_log),
        credentials=server_credentials(certs, "gateway"),
        authorize=acl.authorize,
    )

    def stub_as(identity):
        channel = open_channel(
            f"127.0.0.1:{running.port}",
            [INTERNAL_SERVICE],
            timeout_seconds=10,
            credentials=channel_credentials(certs, identity),
        )
        return internal_pb2_grpc.GatewayInternalServiceStub(channel)

    request = internal_pb2.PurgeExpiredMediaRequest(as_of=Timestamp(seconds=10**9))
    assert stub_as("retention").PurgeExpiredMedia(request).done
    for other in ("gateway", "consent", "audit", "matcher", "operator"):
        details = expect_error(
            grpc.StatusCode.PERMISSION_DENIED, stub_as(other).PurgeExpiredMedia, request
        )
        assert details.reason == "CALLER_NOT_ALLOWED"


def test_the_internal_port_without_tls_starts_only_in_development_mode_on_loopback(tmp_path):
    config = ServerConfig(
        name="gateway",
        data_dir=tmp_path,
        key_dir=tmp_path / "keys",
        listen="127.0.0.1:0",
        database_url="sqlite://",
        tls_dir=None,
        max_message_bytes=1 << 22,
        workers=1,
        grace_seconds=0,
    )
    development = Env({"MIXIP_INSECURE_DEV": "true"})
    assert internal_security(config, development, "127.0.0.1:50056") == {
        "internal_insecure_dev": True
    }
    for env, listen in ((Env({}), "127.0.0.1:50056"), (development, "0.0.0.0:50056")):
        with pytest.raises(ConfigError, match="internal port"):
            internal_security(config, env, listen)


# -- the gateway's access log ---------------------------------------------------------------


def access_log(gateway) -> list[AccessLogRow]:
    gateway.app.access_writer.flush()
    with gateway.app.db.read() as session:
        return list(session.scalars(select(AccessLogRow).order_by(AccessLogRow.sequence)))


def test_access_log_entries_older_than_90_days_go_and_younger_stay(gateway, retention, clock):
    """Through the retention service's purge and the gateway's internal port: an entry goes
    once it is more than 90 days old (MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS' default), the
    younger ones stay, a second run deletes nothing, and a drill purges as of its date."""
    _, meta = gateway.new_account("studio")
    start = clock()
    for _ in range(3):
        gateway.stub.VerifyAuditLog(gpb.VerifyAuditLogRequest(), metadata=meta)
    clock.advance(days=60)
    gateway.stub.ListAuditEvents(gpb.ListAuditEventsRequest(project_id="film-1"), metadata=meta)
    young_at = clock()
    clock.advance(days=30)  # the first entries are exactly 90 days old: not older yet

    assert run_purge(gateway).outcome == SUCCEEDED
    assert {row.occurred_at for row in access_log(gateway)} >= {start, young_at}
    clock.advance(days=1)
    before = access_log(gateway)
    report = run_purge(gateway)

    assert report.outcome == SUCCEEDED
    after = access_log(gateway)
    cutoff = clock() - timedelta(days=90)
    gone = {row.sequence for row in before if row.occurred_at < cutoff}
    assert len(gone) == 4  # the account's creation and the three calls at the start
    assert not gone & {row.sequence for row in after}
    assert {row.sequence for row in before} - gone <= {row.sequence for row in after}
    assert [row.rpc for row in after if row.occurred_at == young_at] == ["ListAuditEvents"]
    assert min(row.occurred_at for row in after) >= cutoff

    kept = {row.sequence for row in access_log(gateway)}
    assert run_purge(gateway).outcome == SUCCEEDED  # a second run deletes nothing
    assert kept <= {row.sequence for row in access_log(gateway)}

    # a drill 30 days ahead: the entry made 31 days ago is then 61 days old, still kept; at 60
    # days ahead it is 91 days old and goes, while the clock (and the entries' times) stay
    run_purge(gateway, as_of=clock() + timedelta(days=30))
    assert young_at in {row.occurred_at for row in access_log(gateway)}
    run_purge(gateway, as_of=clock() + timedelta(days=60))
    assert young_at not in {row.occurred_at for row in access_log(gateway)}


def test_purge_access_log_refuses_a_request_without_a_time_or_with_a_huge_batch(gateway):
    stub = internal_pb2_grpc.GatewayInternalServiceStub(
        open_channel(
            f"127.0.0.1:{gateway.app.internal.port}", [INTERNAL_SERVICE], timeout_seconds=10
        )
    )
    expect_invalid(
        stub.PurgeAccessLog,
        internal_pb2.PurgeAccessLogRequest(batch_size=10_001),
        fields={"as_of", "batch_size"},
    )
    expect_invalid(
        stub.PurgeAccessLog,
        internal_pb2.PurgeAccessLogRequest(as_of=to_timestamp(datetime.now(UTC)), batch_size=-1),
        fields={"batch_size"},
    )


def test_purge_access_log_deletes_the_oldest_first_a_bounded_batch_per_call(gateway, clock):
    """Called until done: each call deletes at most its batch, oldest first."""
    writer = gateway.app.access_writer
    for days_ago in (200, 150, 120, 100, 10):
        writer.add(
            {
                "account_id": "acct_a",
                "owner_account_id": "acct_a",
                "api_key_id": "0123456789abcdef",
                "peer": "ipv4:127.0.0.1:1",
                "rpc": "VerifyAuditLog",
                "project_id": "",
                "media_id": f"med_{days_ago}",
                "status_code": "OK",
                "occurred_at": clock() - timedelta(days=days_ago),
            }
        )
    log = gateway.app.access_log
    assert log.purge(clock(), 3) == (3, False)  # the write-out before it made the entries land
    assert {r.media_id for r in access_log(gateway) if r.account_id == "acct_a"} == {
        "med_100",
        "med_10",
    }
    assert log.purge(clock(), 3) == (1, True)
    assert log.purge(clock(), 3) == (0, True)
