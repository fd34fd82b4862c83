"""Bad input for an account's own profile, closure and export (docs/accounts.md): the calling
account's UpdateAccount and CloseOwnAccount, the admin's CloseAccount and ExportAccount. Same
harness and oracle style as test_bad_input.py: a request with a BAD field is INVALID_ARGUMENT
and writes nothing; a GOOD one gets the RPC's normal answer. No example closes the harness's
account (a closure's confirmation and ids never name it)."""

from __future__ import annotations

import json
import re

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.accounts import EMAIL_MAX
from mixip.gateway.v1 import admin_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    BAD,
    GOOD,
    NOT_FOUND,
    OK,
    _call,
    _settings,
    expected,
    id_verdict,
    ids,
    text_verdict,
    texts,
)

HARNESS_ACCOUNT = "<the harness's account>"  # replaced by its id in the test
EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
emails = st.one_of(
    st.sampled_from(["", "a@b", "studio@example.com", "a b@c", "@b", "a@", "a@@b", "x" * 300]),
    st.emails().map(str),
    texts,
)


def email_verdict(value: str) -> int:
    if not value:
        return GOOD
    if text_verdict(value, EMAIL_MAX, required=False) == BAD or not EMAIL.fullmatch(value):
        return BAD
    return GOOD


@_settings(120)
@given(name=st.none() | texts, email=st.none() | emails)
@example(name=None, email=None)
@example(name="Studio", email="studio@example.com")
@example(name="", email=None)
@example(name=None, email="not-an-email")
def test_update_account(harness, name, email):
    verdicts = [BAD] if name is None and email is None else []
    if name is not None:
        verdicts.append(text_verdict(name, 128, required=True))
    if email is not None:
        verdicts.append(email_verdict(email))

    def updated(reply):
        assert reply.account.account_id == harness.account_id
        if name is not None:
            assert reply.account.name == name
        if email is not None:
            assert reply.account.email == email

    harness.case(
        "UpdateAccount",
        _call(
            harness.stub.UpdateAccount,
            pb.UpdateAccountRequest(name=name, email=email),
            harness.meta,
        ),
        allowed=expected(*verdicts, ok={OK}),
        # the email sealed under the account's own key, made at the first
        writes={"gateway.gateway_accounts", "gateway.gateway_talent_keys"},
        on_ok=updated,
        fields={"name", "email"},
    )


@_settings(60)
@given(confirm=st.one_of(st.just(""), ids))
@example(confirm="")
@example(confirm="acct_0000000000000000")
def test_close_own_account_needs_its_own_id(harness, confirm):
    harness.case(
        "CloseOwnAccount",
        _call(
            harness.stub.CloseOwnAccount,
            pb.CloseOwnAccountRequest(confirm_account_id=confirm),
            harness.meta,
        ),
        allowed={"INVALID_ARGUMENT"},
        fields={"confirm_account_id"},
    )


@_settings(60)
@given(account_id=ids)
@example(account_id="")
@example(account_id="acct_0000000000000000")
def test_close_account(harness, account_id):
    harness.case(
        "CloseAccount",
        _call(
            harness.admin.CloseAccount,
            admin_pb2.CloseAccountRequest(account_id=account_id),
            harness.admin_meta,
        ),
        allowed=expected(id_verdict(account_id), ok={NOT_FOUND}),
        fields={"account_id"},
    )


@_settings(60)
@given(account_id=st.one_of(st.just(HARNESS_ACCOUNT), ids))
@example(account_id=HARNESS_ACCOUNT)
@example(account_id="acct_0000000000000000")
def test_export_account(harness, account_id):
    if account_id == HARNESS_ACCOUNT:
        account_id = harness.account_id
    ours = account_id == harness.account_id

    def exported(reply):
        assert json.loads(reply.document_json)["account"]["account_id"] == account_id

    harness.case(
        "ExportAccount",
        _call(
            harness.admin.ExportAccount,
            admin_pb2.ExportAccountRequest(account_id=account_id),
            harness.admin_meta,
        ),
        allowed=expected(id_verdict(account_id), ok={OK} if ours else {NOT_FOUND}),
        on_ok=exported,
        fields={"account_id"},
    )
