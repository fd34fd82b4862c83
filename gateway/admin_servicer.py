"""The gRPC edge of `AdminService` (the client port, the admin key only): authenticate the
admin, validate, map proto to domain and back, and delegate to the use-case modules (accounts,
closures, account_export, retention, operations). No peer is called from here."""

from __future__ import annotations

import grpc

from gateway.account_export import EXPORT_SCHEMA, AccountExports
from gateway.accounts import Accounts
from gateway.auth import Authenticator
from gateway.closures import Closures
from gateway.messages import account_message, api_key_message, closure_message
from gateway.operations import Operations
from gateway.retention import MediaRetention
from gateway.settings import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS
from mixip.gateway.v1 import admin_pb2, admin_pb2_grpc
from mixip.retention.v1 import retention_pb2
from mixip.runtime.paging import decode_page_token, encode_page_token
from mixip.runtime.times import Clock, to_timestamp
from mixip.runtime.validation import Checks


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        auth: Authenticator,
        accounts: Accounts,
        retention: MediaRetention,
        operations: Operations,
        clock: Clock,
        *,
        closures: Closures,
        exports: AccountExports,
    ) -> None:
        self.auth = auth
        self.accounts = accounts
        self.retention = retention
        self.operations = operations
        self.clock = clock
        self.closures = closures
        self.exports = exports

    def CloseAccount(
        self, request: admin_pb2.CloseAccountRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CloseAccountResponse:
        admin = self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.done()
        closure = self.closures.close(request.account_id, admin.key_id)
        return admin_pb2.CloseAccountResponse(closure=closure_message(closure))

    def ExportAccount(
        self, request: admin_pb2.ExportAccountRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ExportAccountResponse:
        self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.done()
        document = self.exports.export(request.account_id)
        return admin_pb2.ExportAccountResponse(schema_version=EXPORT_SCHEMA, document_json=document)

    def CreateAccount(
        self, request: admin_pb2.CreateAccountRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateAccountResponse:
        self.auth.admin(context)
        checks = Checks()
        checks.text("name", request.name, max_length=128)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        account, token, key_id = self.accounts.create_account(request.name, request.request_id)
        return admin_pb2.CreateAccountResponse(
            account=account_message(account), api_key=token, api_key_id=key_id
        )

    def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateApiKeyResponse:
        self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.done()
        token, key_id = self.accounts.create_key(request.account_id)
        return admin_pb2.CreateApiKeyResponse(api_key=token, api_key_id=key_id)

    def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListApiKeysResponse:
        self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"a": request.account_id}
        after = decode_page_token(request.page_token, filters, kind=str) or ""
        keys, next_after = self.accounts.list_keys(request.account_id, page_size, after)
        return admin_pb2.ListApiKeysResponse(
            api_keys=[api_key_message(k) for k in keys],
            next_page_token=encode_page_token(next_after, filters) if next_after else "",
        )

    def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeApiKeyResponse:
        self.auth.admin(context)
        checks = Checks()
        checks.identifier("api_key_id", request.api_key_id)
        checks.done()
        return admin_pb2.RevokeApiKeyResponse(
            api_key=api_key_message(self.accounts.revoke_key(request.api_key_id))
        )

    def ListAccounts(
        self, request: admin_pb2.ListAccountsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListAccountsResponse:
        self.auth.admin(context)
        checks = Checks()
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        after = decode_page_token(request.page_token, {}, kind=str) or ""
        accounts, next_after = self.accounts.list_accounts(page_size, after)
        return admin_pb2.ListAccountsResponse(
            accounts=[account_message(a) for a in accounts],
            next_page_token=encode_page_token(next_after, {}) if next_after else "",
        )

    def RunRetentionJob(
        self, request: admin_pb2.RunRetentionJobRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RunRetentionJobResponse:
        admin = self.auth.admin(context)
        checks = Checks()
        checks.enum("job", request.job, retention_pb2.RetentionJob)
        drill = request.HasField("as_of")
        checks.drill_time("as_of", request.as_of, drill, self.clock())
        if drill and request.job not in (0, retention_pb2.RETENTION_JOB_PURGE):
            checks.fail("as_of", "only the purge job runs as of a later date")
        checks.done()
        report = self.operations.run_retention_job(
            request.job, request.as_of if drill else None, admin.key_id
        )
        return admin_pb2.RunRetentionJobResponse(report=report)

    def GetRetentionStatus(
        self, request: admin_pb2.GetRetentionStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetRetentionStatusResponse:
        self.auth.admin(context)
        return admin_pb2.GetRetentionStatusResponse(status=self.operations.retention_status())

    def SetAccountRetention(
        self, request: admin_pb2.SetAccountRetentionRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetAccountRetentionResponse:
        admin = self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        if not MIN_RETENTION_DAYS <= request.retention_days <= MAX_RETENTION_DAYS:
            checks.fail(
                "retention_days", f"must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS}"
            )
        checks.done()
        saved = self.retention.set_account_retention(
            request.account_id, request.retention_days, admin.key_id
        )
        return admin_pb2.SetAccountRetentionResponse(
            account_id=saved.account_id,
            retention_days=saved.retention_days,
            updated_at=to_timestamp(saved.updated_at),
        )

    def GetVaultStatus(
        self, request: admin_pb2.GetVaultStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetVaultStatusResponse:
        self.auth.admin(context)
        key_version, rotated_at = self.operations.vault_status()
        return admin_pb2.GetVaultStatusResponse(key_version=key_version, rotated_at=rotated_at)
