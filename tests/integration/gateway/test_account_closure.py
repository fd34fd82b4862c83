"""Closing an account (gateway/closures.py), its profile and its own export (issue 22): after a
closure nothing of the account remains in any store but what docs/retention.md lists, the other
accounts keep everything of their own, and a closure stopped at any step boundary resumes to the
same end state."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import String, func, select

from gateway.store import AccountClosureRow, AccountRow, MediaRow, UploadSessionRow
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import admin_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.db import Database
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.disk import database_bytes, found_in
from tests.support.gateway_calls import (
    PROJECT,
    consent,
    enroll,
    finished_job,
    group_photo,
    invite,
    start_job,
    upload,
)
from tests.support.status import expect_error, expect_invalid

# What of a closed account outlives it, table by table (docs/retention.md lists each, with its
# reason and end): every other table holds no row naming the account.
KEPT = {
    # the gateway's
    "gateway_account_closures",  # the closure's receipt
    "gateway_erasure_receipts",  # each talent's erasure receipt
    "gateway_erasure_intents",  # completed: no talent id; its fence key for 1 hour
    "gateway_access_log",  # security: 90 days
    "gateway_review_decisions",  # its decisions on another account's media (the owner's)
    # consent's
    "consent_tombstones",  # proof each erasure ran
    "consent_account_versions",  # a counter
    # the matcher's
    "matcher_collections",  # a version counter
    "matcher_collection_changes",  # face ids removed (no talent id, no vector)
    # the audit's: the chain stays verifiable, its talent hashes unlinkable, for 12 months
    "audit_events",
    "audit_chain_heads",
    "audit_tree_nodes",
    "audit_checkpoints",
    "audit_signed_checkpoints",
    "audit_shred_markers",
    "audit_salt_activity",
}

NAME = "Zanzibar Pictures"
EMAIL = "zanzi@example.com"
TALENT = "talent-quokka"
CONSENTED = "talent-numbat"  # consented, never enrolled
FILENAME = "quokka-shoot.jpg"
NOTE = "nota-bene-xyzzy"
OTHER_TALENT = "talent-wombat"
OTHER_NAME = "Partner Films"
OTHER_EMAIL = "partner@example.com"
OTHER_PROJECT = "b-film"


@pytest.fixture
def gateway_overrides() -> dict:
    return {"webhooks_allow_private": True}


@pytest.fixture
def hooks(gateway) -> Checkpoints:
    hooks = Checkpoints()
    gateway.app.closures.checkpoint = hooks
    gateway.app.uploads.checkpoint = hooks
    return hooks


def _grant(gateway, meta, clock, talent, project=PROJECT):
    consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project=project)


class World:
    """Two accounts: A (to close) holds everything; B collaborates on A's project and A on B's."""

    def __init__(self, gateway, clock) -> None:
        stub = gateway.stub
        self.a, self.meta = gateway.new_account(NAME)
        self.b, self.b_meta = gateway.new_account(OTHER_NAME)
        stub.UpdateAccount(pb.UpdateAccountRequest(email=EMAIL), metadata=self.meta)
        stub.UpdateAccount(pb.UpdateAccountRequest(email=OTHER_EMAIL), metadata=self.b_meta)
        second = gateway.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(account_id=self.a), metadata=gateway.admin_metadata()
        )
        self.second_meta = (("authorization", f"Bearer {second.api_key}"),)
        # A's talents: one enrolled and consented, one consented only
        _grant(gateway, self.meta, clock, TALENT)
        enroll(gateway, self.meta, TALENT, faces.astronaut())
        consent(gateway, self.meta, clock, CONSENTED, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
        # media and results, a decision with a note, a video job, an open upload session
        self.media = upload(gateway, self.meta, group_photo(), filename=FILENAME)
        matched = [f for f in self.media.faces if f.talent_id == TALENT]
        assert matched, "the talent is matched in A's media"
        stub.RecordReviewDecision(
            pb.RecordReviewDecisionRequest(
                media_id=self.media.media_id,
                face_index=matched[0].face_index,
                decision=common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE,
                note=NOTE,
            ),
            metadata=self.meta,
        )
        video = faces.make_video(None, [(faces.astronaut(), 1.0)], fps=2)
        job = start_job(gateway, self.meta, video, filename=FILENAME)
        assert finished_job(gateway, self.meta, job.job_id).state == pb.JOB_STATE_DONE
        self.session = stub.CreateUploadSession(
            pb.CreateUploadSessionRequest(project_id=PROJECT, filename=FILENAME, declared_size=10),
            metadata=self.meta,
        ).session
        stub.AppendUploadChunks(
            iter(
                [
                    pb.AppendUploadChunksRequest(
                        session_id=self.session.session_id, offset=0, data=b"01234"
                    )
                ]
            ),
            metadata=self.meta,
        )
        self.webhook = stub.AddWebhook(
            pb.AddWebhookRequest(url="http://127.0.0.1:9/hook"), metadata=self.meta
        ).webhook
        # B: its own talent and project; an uploader on A's project; A a reviewer on B's
        _grant(gateway, self.b_meta, clock, OTHER_TALENT, project=OTHER_PROJECT)
        enroll(gateway, self.b_meta, OTHER_TALENT, faces.grace_hopper())
        self.b_media = upload(gateway, self.b_meta, group_photo(), project=OTHER_PROJECT)
        invite(gateway, self.meta, self.b, pb.PROJECT_ROLE_UPLOADER)
        self.b_upload_to_a = upload(gateway, self.b_meta, faces.encode(faces.astronaut()))
        invite(gateway, self.b_meta, self.a, pb.PROJECT_ROLE_REVIEWER, project=OTHER_PROJECT)
        self.a_decision_on_b = stub.RecordReviewDecision(
            pb.RecordReviewDecisionRequest(
                media_id=self.b_media.media_id,
                face_index=0,
                decision=common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE,
                note="reviewed by A",
            ),
            metadata=self.meta,
        ).decision
        with gateway.app.db.read() as session:
            self.a_objects = list(
                session.scalars(select(MediaRow.storage_key).where(MediaRow.account_id == self.a))
            )
            self.b_objects = list(
                session.scalars(select(MediaRow.storage_key).where(MediaRow.account_id == self.b))
            )
            self.a_objects.append(
                session.get(UploadSessionRow, self.session.session_id).storage_key
            )
        assert len(self.a_objects) == 4  # the photo, the job's video, B's upload, the session


def _close(gateway, account) -> admin_pb2.AccountClosure:
    return gateway.admin.CloseAccount(
        admin_pb2.CloseAccountRequest(account_id=account), metadata=gateway.admin_metadata()
    ).closure


def _stores(gateway) -> dict[str, Database]:
    return {
        "gateway": gateway.app.db,
        "consent": gateway.mesh.consent.app.db,
        "matcher": gateway.mesh.matcher.app.db,
        "audit": gateway.audit.app.db,
    }


def tables_naming(db: Database, value: str) -> set[str]:
    """Every table with a row whose string column holds exactly `value`."""
    found = set()
    with db.read() as session:
        for table in db.metadata.sorted_tables:
            for column in table.columns:
                if not isinstance(column.type, String):
                    continue
                count = session.scalar(
                    select(func.count()).select_from(table).where(column == value)
                )
                if count:
                    found.add(table.name)
                    break
    return found


def _object_paths(gateway, keys: list[str]) -> Iterator[Path]:
    root = gateway.app.media_store.root
    for key in keys:
        yield from root.glob(f"{key[:2]}/{key}*")


def assert_closed(gateway, world: World, closure: admin_pb2.AccountClosure) -> None:
    """Nothing of A remains but what KEPT lists; B keeps everything of its own."""
    assert closure.completed_at.seconds and closure.talents_erased == 2
    for meta in (world.meta, world.second_meta):
        expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            gateway.stub.GetAccount,
            pb.GetAccountRequest(),
            metadata=meta,
        )
    left = set().union(*(tables_naming(db, world.a) for db in _stores(gateway).values()))
    assert left <= KEPT, f"rows of the closed account left in {sorted(left - KEPT)}"
    assert "gateway_erasure_receipts" in left and "gateway_account_closures" in left
    with gateway.app.db.read() as session:
        kept = session.get(AccountClosureRow, world.a)
        assert kept.pending_objects is None and kept.completed_at is not None
        assert session.get(AccountRow, world.a) is None
    # no byte of its name, email, talents, file names or notes on disk, in any database
    needles = (NAME, EMAIL, TALENT, CONSENTED, FILENAME, NOTE)
    for service, db in _stores(gateway).items():
        assert found_in(database_bytes(db), *needles) == [], service
    assert list(_object_paths(gateway, world.a_objects)) == []
    # B: its profile, project, media, objects, talent and key, and A's decision on its media
    b = gateway.stub.GetAccount(pb.GetAccountRequest(), metadata=world.b_meta).account
    assert (b.name, b.email) == (OTHER_NAME, OTHER_EMAIL)
    listed = gateway.stub.ListMedia(
        pb.ListMediaRequest(project_id=OTHER_PROJECT), metadata=world.b_meta
    ).media
    assert [m.media_id for m in listed] == [world.b_media.media_id]
    assert len(list(_object_paths(gateway, world.b_objects))) == len(world.b_objects) == 1
    history = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=world.b_media.media_id), metadata=world.b_meta
    )
    assert any(f.talent_id == OTHER_TALENT for f in history.media.faces)
    assert [(d.decision_id, d.note) for d in history.decisions] == [
        (world.a_decision_on_b.decision_id, "reviewed by A")
    ]
    faces_left = gateway.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(talent_id=OTHER_TALENT), metadata=world.b_meta
    ).faces
    assert len(faces_left) == 1
    # B lost A's project only (the one it collaborated on)
    projects = gateway.stub.ListProjects(pb.ListProjectsRequest(), metadata=world.b_meta).projects
    assert [(p.project_id, p.owner_account_id) for p in projects] == [(OTHER_PROJECT, world.b)]
    # the closure is listed as such, and a second one returns the same receipt
    again = _close(gateway, world.a)
    assert again.receipt_id == closure.receipt_id and list(again.steps) == list(closure.steps)


def test_closing_an_account_leaves_nothing_of_it_but_what_retention_lists(gateway, clock):
    world = World(gateway, clock)
    closure = _close(gateway, world.a)
    assert [s.name for s in closure.steps] == [
        "gateway.fence",
        "talents.erase",
        "gateway.deliver_audit_events",
        "gateway.delete_data",
        "media_store.delete_objects",
    ]
    assert_closed(gateway, world, closure)


@pytest.mark.parametrize(
    "stop_at",
    # the closure's own boundaries, and one inside a talent's erasure (its intent left open)
    ["close.fenced", "erase.matcher", "close.talents", "close.delivered", "close.data"],
)
def test_a_closure_stopped_at_any_step_boundary_resumes_to_the_same_end(
    gateway, clock, hooks, stop_at
):
    world = World(gateway, clock)

    def stop(name: str) -> None:
        if name == stop_at:
            raise RuntimeError(f"stopped at {name}")

    gateway.app.closures.checkpoint = gateway.app.erasures.checkpoint = stop
    with pytest.raises(RuntimeError):
        gateway.app.closures.close(world.a, "test")
    gateway.app.erasures.checkpoint = hooks
    assert gateway.app.closures.pending() == 1  # the metric the resumer's work shows in
    # at once: its keys are refused and its collaborator lost its project
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        gateway.stub.GetAccount,
        pb.GetAccountRequest(),
        metadata=world.meta,
    )
    projects = gateway.stub.ListProjects(pb.ListProjectsRequest(), metadata=world.b_meta).projects
    assert world.a not in {p.owner_account_id for p in projects}
    gateway.app.closures.checkpoint = hooks
    assert gateway.app.closures.resume() == 1
    assert gateway.app.closures.resume() == 0
    assert gateway.app.closures.pending() == 0
    closure = _close(gateway, world.a)
    assert [s.name for s in closure.steps][-1] == "media_store.delete_objects"
    assert_closed(gateway, world, closure)


def test_an_upload_running_while_the_account_closes_keeps_nothing(gateway, clock, hooks):
    account, meta = gateway.new_account(NAME)
    _grant(gateway, meta, clock, TALENT)
    enroll(gateway, meta, TALENT, faces.astronaut())
    pause = hooks.pause_at("upload.matched")
    running = Outcome(lambda: upload(gateway, meta, group_photo(), filename=FILENAME), pause)
    pause.reached()
    closure = _close(gateway, account)  # the upload has its match, not its commit
    pause.release()
    error = running.join().error
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "closed" in error.details()
    assert closure.talents_erased == 1
    assert tables_naming(gateway.app.db, account) <= KEPT
    assert list(gateway.app.media_store.root.glob("??/*")) == []  # its bytes went too


def test_a_job_matching_while_the_account_closes_keeps_nothing(gateway, clock, hooks):
    gateway.app.jobs.checkpoint = hooks
    account, meta = gateway.new_account(NAME)
    _grant(gateway, meta, clock, TALENT)
    enroll(gateway, meta, TALENT, faces.astronaut())
    matched = hooks.pause_at("job.matched")
    start_job(gateway, meta, group_photo(), filename=FILENAME)
    matched.reached()  # the worker has its match, not its commit
    closure = _close(gateway, account)
    matched.release()
    gateway.app.jobs.stop()  # the attempt ends: its commit found the account closed
    assert closure.completed_at.seconds and closure.talents_erased == 1
    assert tables_naming(gateway.app.db, account) <= KEPT
    assert list(gateway.app.media_store.root.glob("??/*")) == []
    assert found_in(database_bytes(gateway.app.db), FILENAME, TALENT, NAME) == []


def test_bad_closures_are_refused_and_change_nothing(gateway, clock):
    account, meta = gateway.new_account(NAME)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.admin.CloseAccount,
        admin_pb2.CloseAccountRequest(account_id="acct_0000000000000000"),
        metadata=gateway.admin_metadata(),
    )
    expect_invalid(
        gateway.admin.CloseAccount,
        admin_pb2.CloseAccountRequest(),
        fields={"account_id"},
        metadata=gateway.admin_metadata(),
    )
    expect_invalid(
        gateway.stub.CloseOwnAccount,
        pb.CloseOwnAccountRequest(confirm_account_id="acct_someone_else"),
        fields={"confirm_account_id"},
        metadata=meta,
    )
    expect_error(  # an account key cannot close another account through the admin service
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.admin.CloseAccount,
        admin_pb2.CloseAccountRequest(account_id=account),
        metadata=meta,
    )
    assert gateway.stub.GetAccount(pb.GetAccountRequest(), metadata=meta).account.name == NAME
    with gateway.app.db.read() as session:
        assert session.scalar(select(func.count()).select_from(AccountClosureRow)) == 0
    # the account closes itself, confirming its id; its key stops working at once
    closure = gateway.stub.CloseOwnAccount(
        pb.CloseOwnAccountRequest(confirm_account_id=account), metadata=meta
    ).closure
    assert closure.account_id == account and closure.completed_at.seconds
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        gateway.stub.GetAccount,
        pb.GetAccountRequest(),
        metadata=meta,
    )
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        gateway.admin.CreateApiKey,
        admin_pb2.CreateApiKeyRequest(account_id=account),
        metadata=gateway.admin_metadata(),
    )
    assert _close(gateway, account).receipt_id == closure.receipt_id


def test_the_profile_is_corrected_by_the_account_and_its_email_is_sealed(gateway, caplog):
    account, meta = gateway.new_account("studio")
    with caplog.at_level(logging.DEBUG):
        reply = gateway.stub.UpdateAccount(
            pb.UpdateAccountRequest(name=NAME, email=EMAIL), metadata=meta
        ).account
        gateway.stub.GetAccount(pb.GetAccountRequest(), metadata=meta)
        gateway.app.access_writer.flush()
    assert "account profile updated" in caplog.text and EMAIL not in caplog.text
    assert (reply.account_id, reply.name, reply.email) == (account, NAME, EMAIL)
    listed = gateway.admin.ListAccounts(
        admin_pb2.ListAccountsRequest(), metadata=gateway.admin_metadata()
    ).accounts
    assert [(a.name, a.email) for a in listed if a.account_id == account] == [(NAME, EMAIL)]
    with gateway.app.db.read() as session:
        row = session.get(AccountRow, account)
        assert row.sealed_email and EMAIL.encode() not in row.sealed_email
    assert found_in(database_bytes(gateway.app.db), EMAIL) == []
    # the owner of a project it collaborates on reads its name and email there
    _, owner_meta = gateway.new_account(OTHER_NAME)
    project = pb.CreateProjectRequest(project_id=OTHER_PROJECT, display_name="B film")
    gateway.stub.CreateProject(project, metadata=owner_meta)
    invite(
        gateway, owner_meta, account, pb.PROJECT_ROLE_VIEWER, project=OTHER_PROJECT, accept=False
    )
    [collaborator] = gateway.stub.ListCollaborators(
        pb.ListCollaboratorsRequest(project_id=OTHER_PROJECT), metadata=owner_meta
    ).collaborators
    assert (collaborator.account_name, collaborator.account_email) == (NAME, EMAIL)
    # only the fields set change; "" removes the email
    gateway.stub.UpdateAccount(pb.UpdateAccountRequest(email=""), metadata=meta)
    shown = gateway.stub.GetAccount(pb.GetAccountRequest(), metadata=meta).account
    assert (shown.name, shown.email) == (NAME, "")
    for bad in (
        pb.UpdateAccountRequest(email="not-an-email"),
        pb.UpdateAccountRequest(email="a b@c"),
        pb.UpdateAccountRequest(name=""),
        pb.UpdateAccountRequest(),
    ):
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, gateway.stub.UpdateAccount, bad, metadata=meta
        )
    assert gateway.stub.GetAccount(pb.GetAccountRequest(), metadata=meta).account.name == NAME


def test_the_account_export_holds_everything_it_owns_and_nothing_of_another(gateway, clock):
    world = World(gateway, clock)
    reply = gateway.stub.ExportOwnAccount(pb.ExportOwnAccountRequest(), metadata=world.meta)
    assert reply.schema_version == "mixip.account-export/1"
    document = json.loads(reply.document_json)
    by_admin = gateway.admin.ExportAccount(
        admin_pb2.ExportAccountRequest(account_id=world.a), metadata=gateway.admin_metadata()
    )
    assert json.loads(by_admin.document_json)["media"] == document["media"]
    assert document["account"] == {
        "account_id": world.a,
        "name": NAME,
        "email": EMAIL,
        "created_at": document["account"]["created_at"],
    }
    [project] = document["projects"]
    assert project["project_id"] == PROJECT
    assert [(c["account_id"], c["role"]) for c in project["collaborators"]] == [
        (world.b, "PROJECT_ROLE_UPLOADER")
    ]
    assert [(c["owner_account_id"], c["role"]) for c in document["collaborations"]] == [
        (world.b, "PROJECT_ROLE_REVIEWER")
    ]
    with gateway.app.db.read() as session:
        owned = set(
            session.scalars(select(MediaRow.media_id).where(MediaRow.account_id == world.a))
        )
    assert {m["media_id"] for m in document["media"]} == owned
    assert world.b_upload_to_a.media_id in owned  # uploaded to A's project: A's media
    photo = next(m for m in document["media"] if m["media_id"] == world.media.media_id)
    assert photo["filename"] == FILENAME
    assert TALENT in {r["talent_id"] for r in photo["results"]}
    assert [d["note"] for d in photo["review_decisions"]] == [NOTE]
    assert len(document["jobs"]) == 1 and document["jobs"][0]["state"] == "JOB_STATE_DONE"
    assert [w["webhook_id"] for w in document["webhooks"]] == [world.webhook.webhook_id]
    assert len(document["api_keys"]) == 2
    assert all(set(k) == {"key_id", "created_at", "revoked_at"} for k in document["api_keys"])
    rpcs = {e["rpc"] for e in document["access_log"]}
    assert {"UploadMedia", "RecordReviewDecision", "AddWebhook"} <= rpcs
    # (its access log names the ids its own calls named, B's media among them: its own calls)
    text = json.dumps({k: v for k, v in document.items() if k != "access_log"})
    assert OTHER_NAME not in reply.document_json and OTHER_EMAIL not in reply.document_json
    for foreign in (
        OTHER_NAME,
        OTHER_EMAIL,
        OTHER_TALENT,
        world.b_media.media_id,
        world.a_decision_on_b.decision_id,
        "mixip_",  # no key's secret
    ):
        assert foreign not in text, foreign
    assert not any(e["account_id"] not in (world.a, world.b) for e in document["access_log"])


def test_closing_and_exporting_from_the_cli(gateway, cli, tmp_path, clock):
    account, meta = gateway.new_account(NAME)
    code, out, err = cli("accounts", "close", account)
    assert code == 2 and "--yes" in err
    gateway.stub.UpdateAccount(pb.UpdateAccountRequest(email=EMAIL), metadata=meta)
    code, out, err = cli("accounts", "show", account)
    assert code == 0 and NAME in out and EMAIL in out, err
    exported = tmp_path / "account.json"
    code, out, err = cli("accounts", "export", account, "-o", str(exported))
    assert code == 0, err
    assert exported.stat().st_mode & 0o777 == 0o600
    assert json.loads(exported.read_text())["account"]["name"] == NAME
    code, out, err = cli("accounts", "close", account, "--yes")
    assert code == 0, err
    assert "receipt close_" in out
    receipt = out.split("receipt ", 1)[1].split()[0]
    code, again, err = cli("accounts", "close", account, "--yes")
    assert code == 0 and f"receipt {receipt}" in again
    code, out, err = cli("accounts", "close", "acct_0000000000000000", "--yes")
    assert code != 0 and "Traceback" not in err


def test_the_account_updates_its_profile_from_the_cli(gateway, cli, studio):
    code, out, err = cli("account", "update", "--name", NAME, "--email", EMAIL)
    assert code == 0, err
    code, out, err = cli("account", "show")
    assert code == 0 and NAME in out and EMAIL in out
    code, out, err = cli("account", "update", "--email", "nope")
    assert code != 0 and "email" in err and "Traceback" not in err
