"""The gateway's access log: every client-port call recorded with its caller and final status
(failures too), never a talent id; each account sees its own entries and those of calls on its
data, and no one else's; pages and filters; the bounded writer.

Retention of the log (purged after 90 days by the retention service): tests/integration/
retention/test_copies.py::test_access_log_entries_older_than_90_days_go_and_younger_stay."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import insert, select

from gateway.access_recording import DROPPED, AccessLogWriter
from gateway.store import AccessLogRow, Base
from mixip.gateway.v1 import admin_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.db import Database
from mixip.runtime.times import to_timestamp
from tests.support.gateway_calls import PROJECT, group_photo, upload
from tests.support.status import expect_error, expect_invalid

TALENT = "astronaut"  # the studio fixture's enrolled talent


def key_id(meta) -> str:
    return meta[0][1].split("_")[1]  # "Bearer mixip_<key id>_<secret>"


def log_of(gateway, meta, **filters) -> list[pb.AccessLogEntry]:
    """Every entry the caller's account sees, page by page."""
    entries, token = [], ""
    while True:
        page = gateway.stub.ListAccessLog(
            pb.ListAccessLogRequest(page_size=3, page_token=token, **filters), metadata=meta
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


def stored(gateway) -> list[AccessLogRow]:
    gateway.app.access_writer.flush()
    with gateway.app.db.read() as session:
        return list(session.scalars(select(AccessLogRow).order_by(AccessLogRow.sequence)))


def test_ok_and_failing_calls_are_recorded_with_the_caller_and_the_final_status(gateway, clock):
    account, meta = gateway.new_account("studio")
    gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta)
    clock.advance(minutes=1)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        pb.GetMediaResultsRequest(media_id="med_nothing"),
        metadata=meta,
    )
    expect_invalid(
        gateway.stub.ListAuditEvents,
        pb.ListAuditEventsRequest(project_id="film-2", page_size=5000),
        metadata=meta,
        fields={"page_size"},
    )
    bad_key = (("authorization", "Bearer mixip_0123456789abcdef_" + "x" * 43),)
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        gateway.stub.GetMediaResults,
        pb.GetMediaResultsRequest(media_id="med_other"),
        metadata=bad_key,
    )

    entries = log_of(gateway, meta)
    assert [(e.rpc, e.status_code) for e in entries] == [
        ("VerifyAuditLog", "OK"),
        ("GetMediaResults", "NOT_FOUND"),
        ("ListAuditEvents", "INVALID_ARGUMENT"),
    ]
    assert {(e.account_id, e.api_key_id) for e in entries} == {(account, key_id(meta))}
    assert all(e.peer.startswith(("ipv4:127.0.0.1:", "ipv6:")) for e in entries)
    assert entries[0].occurred_at == to_timestamp(clock() - timedelta(minutes=1))
    assert entries[1].occurred_at == to_timestamp(clock())
    assert (entries[1].media_id, entries[1].project_id) == ("med_nothing", "")
    assert entries[2].project_id == "film-2"
    assert entries[0].sequence < entries[1].sequence < entries[2].sequence

    # the unauthenticated call is recorded with no account (so no account's log shows it)
    [anonymous] = [row for row in stored(gateway) if row.status_code == "UNAUTHENTICATED"]
    assert (anonymous.rpc, anonymous.media_id) == ("GetMediaResults", "med_other")
    assert anonymous.account_id == anonymous.owner_account_id == anonymous.api_key_id == ""


def test_admin_calls_are_recorded_with_the_admin_key_and_no_account(gateway):
    _, meta = gateway.new_account("studio")
    admin_key = gateway.app.admin_key.split("_")[1]
    rows = [row for row in stored(gateway) if row.rpc == "CreateAccount"]
    assert [(r.account_id, r.api_key_id, r.status_code) for r in rows] == [("", admin_key, "OK")]
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.admin.ListAccounts,
        admin_pb2.ListAccountsRequest(),
        metadata=meta,
    )
    [denied] = log_of(gateway, meta)  # an account's key on an admin call: in its log
    assert (denied.rpc, denied.status_code) == ("ListAccounts", "PERMISSION_DENIED")


def test_an_uploads_entry_names_its_project_and_media_and_no_row_holds_a_talent_id(
    gateway, studio, clock
):
    account, meta = studio
    reply = upload(gateway, meta, group_photo())
    assert TALENT in {face.talent_id for face in reply.faces}
    gateway.stub.GetMediaResults(pb.GetMediaResultsRequest(media_id=reply.media_id), metadata=meta)
    gateway.stub.ExportTalentData(pb.ExportTalentDataRequest(talent_id=TALENT), metadata=meta)
    gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(talent_id=TALENT), metadata=meta)

    [uploaded] = [e for e in log_of(gateway, meta) if e.rpc == "UploadMedia"]
    assert (uploaded.project_id, uploaded.media_id) == (PROJECT, reply.media_id)
    assert uploaded.status_code == "OK" and uploaded.account_id == account
    [results] = [e for e in log_of(gateway, meta) if e.rpc == "GetMediaResults"]
    assert results.media_id == reply.media_id
    rows = stored(gateway)
    assert {"RecordConsent", "EnrollTalent", "ExportTalentData"} <= {r.rpc for r in rows}
    columns = AccessLogRow.__table__.columns
    values = [repr(getattr(row, column.name)) for row in rows for column in columns]
    assert values and not any(TALENT in value for value in values)


def test_an_upload_refused_for_a_bad_project_names_none(gateway, clock):
    _, meta = gateway.new_account("studio")
    expect_invalid(
        upload, gateway, meta, group_photo(), project="bad project\n", fields={"header.project_id"}
    )
    [entry] = log_of(gateway, meta)
    assert (entry.rpc, entry.status_code, entry.project_id) == (
        "UploadMedia",
        "INVALID_ARGUMENT",
        "",
    )


def test_another_account_never_sees_the_entries(gateway, clock):
    _, meta = gateway.new_account("studio")
    other, other_meta = gateway.new_account("rival")
    gateway.stub.CreateProject(
        pb.CreateProjectRequest(project_id=PROJECT, display_name="Film"), metadata=meta
    )
    gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(project_id=PROJECT), metadata=meta)
    gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta)

    assert log_of(gateway, other_meta) == []
    # a filter on another account's project is NOT_FOUND, as for a project that does not exist
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ListAccessLog,
        pb.ListAccessLogRequest(project_id=PROJECT),
        metadata=other_meta,
    )
    assert [e.rpc for e in log_of(gateway, other_meta)] == ["ListAccessLog", "ListAccessLog"]
    assert {e.account_id for e in log_of(gateway, other_meta)} == {other}


def test_a_call_on_an_owners_data_is_in_the_owners_and_the_callers_logs_only(gateway, clock):
    """A collaborator's call on an owner's project is attributed to the owner too
    (`note(owner_account_id=...)`, made by the projects' scope resolution)."""
    owner, owner_meta = gateway.new_account("owner")
    caller, caller_meta = gateway.new_account("collaborator")
    _, third_meta = gateway.new_account("third")
    with gateway.app.db.write() as session:
        session.execute(
            insert(AccessLogRow).values(
                account_id=caller,
                owner_account_id=owner,
                api_key_id=key_id(caller_meta),
                peer="ipv4:127.0.0.1:1",
                rpc="GetMediaResults",
                project_id=PROJECT,
                media_id="med_shared",
                status_code="OK",
                occurred_at=clock(),
            )
        )
    for meta in (owner_meta, caller_meta):
        [shared] = [e for e in log_of(gateway, meta) if e.media_id == "med_shared"]
        assert (shared.account_id, shared.project_id) == (caller, PROJECT)
    assert not [e for e in log_of(gateway, third_meta) if e.media_id == "med_shared"]


def test_pages_and_filters_follow_the_log_and_a_token_is_bound_to_its_filters(gateway, clock):
    account, meta = gateway.new_account("studio")
    gateway.app.projects.create(account, PROJECT, "Film")  # not an RPC: the log stays as counted
    gateway.app.projects.create(account, "film-2", "Film 2")
    start = clock()
    for i in range(7):
        project = PROJECT if i % 2 else "film-2"
        gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(project_id=project), metadata=meta)
        clock.advance(hours=1)

    # pages of 3; a later page also holds the earlier pages' own calls (recorded as they end)
    every = log_of(gateway, meta)
    assert [e.rpc for e in every] == ["ListAuditEvents"] * 7 + ["ListAccessLog"] * 2
    assert [e.sequence for e in every] == sorted({e.sequence for e in every})
    in_project = log_of(gateway, meta, project_id=PROJECT)
    assert len(in_project) == 3 and {e.project_id for e in in_project} == {PROJECT}
    since = to_timestamp(start + timedelta(hours=4))
    later = log_of(gateway, meta, since=since)
    assert [e.occurred_at for e in later] == [
        to_timestamp(start + timedelta(hours=h)) for h in (4, 5, 6)
    ] + [to_timestamp(clock())] * (len(later) - 3)  # and the listings above, at the end
    assert {e.rpc for e in later[3:]} == {"ListAccessLog"}

    first = gateway.stub.ListAccessLog(
        pb.ListAccessLogRequest(page_size=2, project_id=PROJECT), metadata=meta
    )
    assert len(first.entries) == 2 and first.next_page_token
    expect_invalid(
        gateway.stub.ListAccessLog,
        pb.ListAccessLogRequest(page_size=2, page_token=first.next_page_token),
        metadata=meta,
        fields={"page_token"},
    )
    rest = gateway.stub.ListAccessLog(
        pb.ListAccessLogRequest(page_size=2, project_id=PROJECT, page_token=first.next_page_token),
        metadata=meta,
    )
    paged = [e.sequence for e in [*first.entries, *rest.entries]]
    assert paged[:3] == [e.sequence for e in in_project]


def test_bad_requests_are_refused_with_every_bad_field(gateway):
    _, meta = gateway.new_account("studio")
    expect_invalid(
        gateway.stub.ListAccessLog,
        pb.ListAccessLogRequest(
            page_size=5000, project_id="bad id", since=Timestamp(seconds=1, nanos=-1)
        ),
        metadata=meta,
        fields={"page_size", "project_id", "since"},
    )
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED, gateway.stub.ListAccessLog, pb.ListAccessLogRequest()
    )
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.stub.ListAccessLog,
        pb.ListAccessLogRequest(),
        metadata=gateway.admin_metadata(),
    )


def entry(clock, n: int) -> dict:
    return {
        "account_id": "acct_a",
        "owner_account_id": "acct_a",
        "api_key_id": "0123456789abcdef",
        "peer": "ipv4:127.0.0.1:1",
        "rpc": "VerifyAuditLog",
        "project_id": "",
        "media_id": f"med_{n}",
        "status_code": "OK",
        "occurred_at": clock(),
    }


def test_a_full_queue_drops_new_entries_counts_them_and_never_blocks(gateway, clock):
    writer = AccessLogWriter(gateway.app.db, capacity=2, batch_size=500)  # no thread: it waits
    before = DROPPED._value.get()
    for n in range(3):
        writer.add(entry(clock, n))
    assert DROPPED._value.get() == before + 1 and writer.waiting() == 2
    assert writer.flush() == 2 and writer.waiting() == 0
    kept = {row.media_id for row in stored(gateway) if row.account_id == "acct_a"}
    assert kept == {"med_0", "med_1"}


def test_a_flush_writes_in_batches_in_order(gateway, clock):
    writer = AccessLogWriter(gateway.app.db, batch_size=2)
    for n in range(5):
        writer.add(entry(clock, n))
    assert writer.flush() == 5
    mine = [row for row in stored(gateway) if row.account_id == "acct_a"]
    assert [row.media_id for row in mine] == [f"med_{n}" for n in range(5)]


def test_what_is_queued_at_shutdown_is_written(gateway, clock):
    writer = AccessLogWriter(gateway.app.db)
    writer.start()
    for n in range(3):
        writer.add(entry(clock, n))
    writer.close()  # stops the thread, then writes what is left
    assert writer.waiting() == 0
    mine = [row.media_id for row in stored(gateway) if row.account_id == "acct_a"]
    assert mine == ["med_0", "med_1", "med_2"]


def test_a_call_ending_after_shutdown_writes_its_own_entry(gateway, clock):
    """The server's stop(grace) may leave handlers running past the writer's close: their
    entries are written by the call itself, not queued where no thread writes them."""
    writer = AccessLogWriter(gateway.app.db)
    writer.start()
    writer.add(entry(clock, 0))
    writer.close()
    writer.add(entry(clock, 1))  # a handler still ending
    assert writer.waiting() == 0
    mine = [row.media_id for row in stored(gateway) if row.account_id == "acct_a"]
    assert mine == ["med_0", "med_1"]


def test_an_entry_after_shutdown_that_cannot_be_written_is_counted_dropped(
    gateway, clock, tmp_path
):
    gone = Database(f"sqlite:///{tmp_path / 'no-such-dir' / 'gateway.db'}", Base.metadata)
    writer = AccessLogWriter(gone)
    writer.close()
    before = DROPPED._value.get()
    writer.add(entry(clock, 0))
    assert DROPPED._value.get() == before + 1 and writer.waiting() == 0
    gone.dispose()
