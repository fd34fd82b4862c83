"""Bad input on the RPCs of issue 9's correction and key management: DeleteTalentFace,
ListApiKeys and RevokeApiKey. The same oracle and harness as tests/property/test_bad_input.py:
a well-formed status, nothing written unless the call succeeded, the gateway still serving."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import admin_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    DENIED,
    NOT_FOUND,
    OK,
    PAGING_VALID,
    PAGING_WILD,
    PRECONDITION,
    _call,
    _settings,
    expected,
    id_verdict,
    ids,
    page_size_verdict,
    page_token_verdict,
    request_fields,
    valid_ids,
)
from tests.support import faces
from tests.support.gateway_calls import consent, enroll

HEX_KEY_IDS = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
MATCHER_DELETION = {
    "matcher.matcher_faces",
    "matcher.matcher_face_requests",
    "matcher.matcher_collections",
    "matcher.matcher_collection_changes",
    # the talent's last face takes its data key with it, which owes the vault a rotation
    "matcher.matcher_talent_keys",
    "matcher.matcher_vault_state",
}


@_settings(140)
@given(
    talent_id=st.just("t-1") | valid_ids | ids,
    face_id=st.just("f-1") | valid_ids | HEX_KEY_IDS | ids,
)
def test_delete_talent_face(harness, talent_id, face_id):
    harness.case(
        "DeleteTalentFace",
        _call(
            harness.stub.DeleteTalentFace,
            pb.DeleteTalentFaceRequest(talent_id=talent_id, face_id=face_id),
            harness.meta,
        ),
        # nobody is enrolled in the harness's account: a valid request finds no face
        allowed=expected(id_verdict(talent_id), id_verdict(face_id), ok={NOT_FOUND}),
        fields={"talent_id", "face_id"},
    )


def test_delete_talent_face_of_an_enrolled_face_writes_only_the_matcher(harness, clock):
    """The valid case the random draws cannot reach: a real face, deleted once, then gone."""
    gw = harness.gateway
    consent(gw, harness.meta, clock, "t-1", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    face = enroll(gw, harness.meta, "t-1", faces.astronaut()).face
    request = pb.DeleteTalentFaceRequest(talent_id="t-1", face_id=face.face_id)

    def deleted(reply):
        assert reply.face.face_id == face.face_id and reply.face.talent_id == "t-1"

    call = _call(harness.stub.DeleteTalentFace, request, harness.meta)
    other_talent = pb.DeleteTalentFaceRequest(talent_id="t-2", face_id=face.face_id)
    harness.case(
        "DeleteTalentFace",
        _call(harness.stub.DeleteTalentFace, other_talent, harness.meta),
        allowed={NOT_FOUND},
    )
    harness.case("DeleteTalentFace", call, allowed={OK}, writes=MATCHER_DELETION, on_ok=deleted)
    harness.case("DeleteTalentFace", call, allowed={NOT_FOUND})


ACCOUNT = "<the harness's account>"


@_settings(140)
@given(
    fields=request_fields(
        valid={"account_id": st.just(ACCOUNT), **PAGING_VALID},
        wild={"account_id": valid_ids | ids, **PAGING_WILD},
    )
)
def test_list_api_keys(harness, fields):
    account_id, page_size, page_token = (
        fields[f] for f in ("account_id", "page_size", "page_token")
    )
    own = account_id == ACCOUNT
    request = admin_pb2.ListApiKeysRequest(
        account_id=harness.account_id if own else account_id,
        page_size=page_size,
        page_token=page_token,
    )
    secret = harness.meta[0][1].split("_", 2)[2]

    def listed(reply):
        assert [k.account_id for k in reply.api_keys] == [harness.account_id]
        assert secret.encode() not in reply.SerializeToString()

    harness.case(
        "ListApiKeys",
        _call(harness.admin.ListApiKeys, request, harness.admin_meta),
        allowed=expected(
            id_verdict(request.account_id),
            page_size_verdict(page_size),
            page_token_verdict(page_token),
            ok={OK} if own else {NOT_FOUND},
        ),
        on_ok=listed,
        fields={"account_id", "page_size", "page_token"},
    )


ADMIN = "<the admin credential's id>"


@_settings(130)
@given(api_key_id=st.just(ADMIN) | HEX_KEY_IDS | valid_ids | ids)
def test_revoke_api_key(harness, api_key_id):
    admin_key = api_key_id == ADMIN
    if admin_key:
        api_key_id = harness.admin_meta[0][1].split("_")[1]
    harness.case(
        "RevokeApiKey",
        _call(
            harness.admin.RevokeApiKey,
            admin_pb2.RevokeApiKeyRequest(api_key_id=api_key_id),
            harness.admin_meta,
        ),
        # no random id names a key; the admin credential is rotated by configuration
        allowed=expected(id_verdict(api_key_id), ok={PRECONDITION} if admin_key else {NOT_FOUND}),
        fields={"api_key_id"},
    )


def test_revoke_api_key_of_a_live_key_writes_only_the_key_and_refuses_it(harness):
    created = harness.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(account_id=harness.account_id), metadata=harness.admin_meta
    )
    spare = (("authorization", f"Bearer {created.api_key}"),)
    request = admin_pb2.RevokeApiKeyRequest(api_key_id=created.api_key_id)

    def revoked(reply):
        assert reply.api_key.api_key_id == created.api_key_id
        assert reply.api_key.HasField("revoked_at")

    harness.case(
        "RevokeApiKey",
        _call(harness.admin.RevokeApiKey, request, harness.admin_meta),
        allowed={OK},
        writes={"gateway.gateway_api_keys"},
        on_ok=revoked,
    )
    harness.case(  # revoked once: a repeat changes nothing
        "RevokeApiKey",
        _call(harness.admin.RevokeApiKey, request, harness.admin_meta),
        allowed={OK},
    )
    harness.case(  # the revoked key is refused at the door, even on admin RPCs
        "RevokeApiKey",
        _call(harness.admin.RevokeApiKey, request, spare),
        allowed={"UNAUTHENTICATED"},
    )
    harness.case(  # and an account's live key may not revoke keys
        "RevokeApiKey",
        _call(harness.admin.RevokeApiKey, request, harness.meta),
        allowed={DENIED},
    )
