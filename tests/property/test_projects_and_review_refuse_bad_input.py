"""Bad input on the RPCs of the producer's review (issue 12): projects and collaborators, media
listing and review decisions (GetMediaPreview and ListAccessLog have their own files). The same
oracle and harness as tests/property/test_bad_input.py: a well-formed status, nothing written
unless the call succeeded, the gateway still serving. The harness's account owns no project and
no media, so a valid request naming one answers NOT_FOUND, exactly like another tenant's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    BAD,
    GOOD,
    NOT_FOUND,
    OK,
    PAGING_VALID,
    PAGING_WILD,
    _call,
    _empty_page,
    _settings,
    enum_values,
    expected,
    id_verdict,
    ids,
    int32s,
    optional_ids,
    page_size_verdict,
    page_token_verdict,
    request_fields,
    text_verdict,
    texts,
    valid_ids,
)

INVITED_ROLES = {pb.PROJECT_ROLE_REVIEWER, pb.PROJECT_ROLE_UPLOADER, pb.PROJECT_ROLE_VIEWER}
roles = st.sampled_from(sorted(INVITED_ROLES)) | enum_values
decisions = st.sampled_from([1, 2, 3]) | enum_values
names = st.sampled_from(["Film One", "Série B", "x" * 128]) | texts


def _role_verdict(role: int) -> int:
    return GOOD if role in INVITED_ROLES else BAD


def _label_verdict(label: int) -> int:  # optional: 0 means any label
    return GOOD if label == 0 or label in common_pb2.FaceLabel.values() else BAD


def _decision_verdict(decision: int) -> int:
    return GOOD if decision != 0 and decision in common_pb2.ReviewDecision.values() else BAD


def _max_side_verdict(value: int) -> int:
    return GOOD if value == 0 or 64 <= value <= 2048 else BAD


@_settings(50)
@given(
    fields=request_fields(
        valid={"project_id": st.just("") | valid_ids, "display_name": st.just("Film")},
        wild={"project_id": optional_ids, "display_name": names},
    )
)
def test_create_project(harness, fields):
    request = pb.CreateProjectRequest(**fields)

    def created(reply):
        project = reply.project
        assert project.owner_account_id == harness.account_id
        assert project.role == pb.PROJECT_ROLE_OWNER
        assert project.project_id == (request.project_id or project.project_id)
        assert project.project_id.startswith("prj_") or request.project_id

    harness.case(
        "CreateProject",
        _call(harness.stub.CreateProject, request, harness.meta),
        allowed=expected(
            id_verdict(request.project_id, required=False),
            text_verdict(request.display_name, 128, required=True),
            ok={OK},
        ),
        writes={"gateway.gateway_projects"},
        on_ok=created,
        fields={"project_id", "display_name"},
    )


@_settings(30)
@given(fields=request_fields(valid=PAGING_VALID, wild=PAGING_WILD))
def test_list_projects(harness, fields):
    request = pb.ListProjectsRequest(**fields)
    harness.case(
        "ListProjects",
        _call(harness.stub.ListProjects, request, harness.meta),
        allowed=expected(
            page_size_verdict(request.page_size), page_token_verdict(request.page_token), ok={OK}
        ),
        on_ok=_empty_page("projects"),  # the harness's account has no project
        fields={"page_size", "page_token"},
    )


@_settings(50)
@given(
    fields=request_fields(
        valid={
            "project_id": valid_ids,
            "account_id": valid_ids,
            "role": st.sampled_from(sorted(INVITED_ROLES)),
        },
        wild={"project_id": ids, "account_id": ids, "role": roles},
    )
)
def test_invite_collaborator(harness, fields):
    request = pb.InviteCollaboratorRequest(**fields)
    harness.case(
        "InviteCollaborator",
        _call(harness.stub.InviteCollaborator, request, harness.meta),
        allowed=expected(
            id_verdict(request.project_id),
            id_verdict(request.account_id),
            _role_verdict(request.role),
            ok={NOT_FOUND},  # no project of the caller's
        ),
        fields={"project_id", "account_id", "role"},
    )


@_settings(30)
@given(project_id=ids, account_id=ids)
def test_remove_collaborator(harness, project_id, account_id):
    harness.case(
        "RemoveCollaborator",
        _call(
            harness.stub.RemoveCollaborator,
            pb.RemoveCollaboratorRequest(project_id=project_id, account_id=account_id),
            harness.meta,
        ),
        allowed=expected(id_verdict(project_id), id_verdict(account_id), ok={NOT_FOUND}),
        fields={"project_id", "account_id"},
    )


@_settings(30)
@given(
    fields=request_fields(
        valid={"project_id": valid_ids, **PAGING_VALID},
        wild={"project_id": ids, **PAGING_WILD},
    )
)
def test_list_collaborators(harness, fields):
    request = pb.ListCollaboratorsRequest(**fields)
    harness.case(
        "ListCollaborators",
        _call(harness.stub.ListCollaborators, request, harness.meta),
        allowed=expected(
            id_verdict(request.project_id),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={NOT_FOUND},
        ),
        fields={"project_id", "page_size", "page_token"},
    )


@_settings(50)
@given(
    fields=request_fields(
        valid={
            "project_id": valid_ids,
            "label": st.sampled_from([0, 1, 2, 3]),
            "undecided": st.booleans(),
            **PAGING_VALID,
        },
        wild={"project_id": ids, "label": enum_values, "undecided": st.booleans(), **PAGING_WILD},
    )
)
def test_list_media(harness, fields):
    request = pb.ListMediaRequest(**fields)
    harness.case(
        "ListMedia",
        _call(harness.stub.ListMedia, request, harness.meta),
        allowed=expected(
            id_verdict(request.project_id),
            _label_verdict(request.label),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={NOT_FOUND},  # no such project
        ),
        fields={"project_id", "label", "page_size", "page_token"},
    )


@_settings(50)
@given(
    fields=request_fields(
        valid={"project_id": valid_ids, **PAGING_VALID},
        wild={"project_id": ids, **PAGING_WILD},
    )
)
def test_list_clearance_report(harness, fields):
    request = pb.ListClearanceReportRequest(**fields)
    harness.case(
        "ListClearanceReport",
        _call(harness.stub.ListClearanceReport, request, harness.meta),
        allowed=expected(
            id_verdict(request.project_id),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={NOT_FOUND},  # no such project
        ),
        fields={"project_id", "page_size", "page_token"},
    )


@_settings(70)
@given(
    fields=request_fields(
        valid={
            "media_id": valid_ids,
            "face_index": st.sampled_from([0, 1, 7]),
            "decision": st.sampled_from([1, 2, 3]),
            "note": st.just("") | st.just("release form on file"),
            "request_id": st.just("") | valid_ids,
        },
        wild={
            "media_id": ids,
            "face_index": int32s,
            "decision": decisions,
            "note": texts,
            "request_id": texts,
        },
    )
)
def test_record_review_decision(harness, fields):
    request = pb.RecordReviewDecisionRequest(**fields)
    harness.case(
        "RecordReviewDecision",
        _call(harness.stub.RecordReviewDecision, request, harness.meta),
        allowed=expected(
            id_verdict(request.media_id),
            GOOD if request.face_index >= 0 else BAD,
            _decision_verdict(request.decision),
            text_verdict(request.note, 1000, required=False),
            text_verdict(request.request_id, 128, required=False),
            ok={NOT_FOUND},  # no such media
        ),
        fields={"media_id", "face_index", "decision", "note", "request_id"},
    )


@_settings(30)
@given(project_id=ids, owner_account_id=ids)
def test_accept_invitation(harness, project_id, owner_account_id):
    harness.case(
        "AcceptInvitation",
        _call(
            harness.stub.AcceptInvitation,
            pb.AcceptInvitationRequest(project_id=project_id, owner_account_id=owner_account_id),
            harness.meta,
        ),
        allowed=expected(
            id_verdict(project_id), id_verdict(owner_account_id), ok={NOT_FOUND}
        ),  # nobody invited the harness's account
        fields={"project_id", "owner_account_id"},
    )
