"""The rotate-vault retention job: run on request and on its weekly schedule, once per tick
across replicas, against a real audit service."""

from __future__ import annotations

import socket

from mixip.audit.v1 import audit_pb2
from mixip.retention.v1 import retention_pb2 as pb
from services.retention.domain import Job, Outcome


def vault_version(audit_service) -> int:
    return audit_service.stub.GetVaultStatus(audit_pb2.GetVaultStatusRequest()).key_version


def test_run_now_rotates_the_audit_vault(retention_service, audit_service):
    assert vault_version(audit_service) == 1
    reply = retention_service.stub.RunNow(pb.RunNowRequest(job=pb.RETENTION_JOB_ROTATE_VAULT))
    assert reply.report.outcome == pb.RUN_OUTCOME_SUCCEEDED, reply.report.error
    assert reply.report.job == pb.RETENTION_JOB_ROTATE_VAULT
    assert vault_version(audit_service) == 2


def test_the_job_is_scheduled_weekly_by_default(retention_service):
    status = retention_service.stub.GetStatus(pb.GetStatusRequest())
    schedules = {job.job: job.schedule for job in status.jobs}
    assert schedules[pb.RETENTION_JOB_ROTATE_VAULT] == "0 4 * * sun (UTC)"


def test_a_scheduled_tick_rotates_once_across_replicas(
    retention_factory, retention_peers, audit_service
):
    a = retention_factory(**retention_peers).app.service
    b = retention_factory(**retention_peers, env={"MIXIP_RETENTION_REPLICA_ID": "b"}).app.service
    first = a.run_scheduled(Job.ROTATE_VAULT)
    second = b.run_scheduled(Job.ROTATE_VAULT)
    assert (first.outcome, second.outcome) == (Outcome.SUCCEEDED, Outcome.SKIPPED)
    assert vault_version(audit_service) == 2


def test_a_rotation_that_cannot_reach_audit_is_a_failed_run_naming_the_call(
    retention_factory, retention_peers
):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    peers = {**retention_peers, "audit": f"127.0.0.1:{port}"}
    run = retention_factory(**peers).app.service.run_now(Job.ROTATE_VAULT)
    assert run.outcome == Outcome.FAILED
    assert run.error == "audit.RotateVault: UNAVAILABLE"
