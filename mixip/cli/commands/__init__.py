"""The `mixip` commands, one module per noun, each registering its own subcommands.

Building the parser imports every module here, so each keeps what is heavy (gRPC channels, OpenCV,
NumPy, SQLAlchemy, the services' code) inside the functions that run it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mixip.cli.commands.parsing import Subparsers

# The command serving each client-facing RPC (a test keeps it complete).
RPC_COMMANDS = {
    "UploadMedia": "match",
    "CreateUploadSession": "match",
    "AppendUploadChunks": "match",
    "GetUploadSession": "match",
    "FinishUploadSession": "match",
    "GetMediaResults": "media show",
    "RecordConsent": "consent grant",
    "ListConsents": "consent show",
    "EnrollTalent": "enroll",
    "ListTalentFaces": "faces list",
    "DeleteTalentFace": "faces delete",
    "ListAuditEvents": "audit list",
    "VerifyAuditLog": "audit verify",
    "GetAuditCheckpoint": "audit checkpoint",
    "GetAuditInclusionProof": "audit prove",
    "GetAuditConsistencyProof": "audit consistency",
    "GetAuditLogPublicKey": "audit public-key",
    "ExportTalentData": "export",
    "EraseTalent": "erase",
    "CreateAccount": "accounts create",
    "ListAccounts": "accounts list",
    "SetAccountRetention": "accounts retention",
    "CreateApiKey": "keys create",
    "ListApiKeys": "keys list",
    "RevokeApiKey": "keys revoke",
    "RunRetentionJob": "retention run",
    "GetRetentionStatus": "retention status",
    "GetVaultStatus": "audit vault-status",
    "CreateProject": "projects create",
    "ListProjects": "projects list",
    "InviteCollaborator": "projects invite",
    "AcceptInvitation": "projects accept",
    "RemoveCollaborator": "projects remove",
    "ListCollaborators": "projects collaborators",
    "ListMedia": "media list",
    "GetMediaPreview": "media preview",
    "RecordReviewDecision": "review",
    "ListClearanceReport": "report",
    "ListAccessLog": "access-log list",
    "AddWebhook": "webhooks add",
    "ListWebhooks": "webhooks list",
    "RemoveWebhook": "webhooks remove",
    "TestWebhook": "webhooks test",
    "RotateWebhookSecret": "webhooks rotate-secret",
    "GetJob": "jobs show",
    "WatchJob": "jobs wait",
    "CancelJob": "jobs cancel",
    "ListJobs": "jobs list",
    "GetAccount": "account show",
    "UpdateAccount": "account update",
    "CloseOwnAccount": "account close",
    "ExportOwnAccount": "account export",
    "CloseAccount": "accounts close",
    "ExportAccount": "accounts export",
}


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Every command, in `--help`'s order."""
    from mixip.cli.commands import (
        access_log,
        accounts,
        audit,
        completion,
        consent,
        db,
        demo,
        jobs,
        keys,
        match,
        media,
        mesh,
        projects,
        retention,
        review,
        talent,
        webhooks,
        witness,
    )

    mesh.register(sub, common)
    completion.register(sub, common)
    demo.register(sub, common)
    accounts.register(sub, common)
    consent.register(sub, common)
    talent.register_enroll(sub, common)
    match.register(sub, common)
    media.register(sub, common)
    talent.register_rights(sub, common)
    audit.register(sub, common)
    retention.register(sub, common)
    talent.register_faces(sub, common)
    keys.register(sub, common)
    jobs.register(sub, common)
    projects.register(sub, common)
    review.register(sub, common)
    access_log.register(sub, common)
    db.register(sub, common)
    webhooks.register(sub, common)
    witness.register(sub, common)
