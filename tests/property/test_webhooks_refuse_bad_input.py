"""Bad input for the webhook RPCs (AddWebhook, ListWebhooks, RemoveWebhook, TestWebhook,
RotateWebhookSecret). Same harness and oracle style as test_bad_input.py: a request with a BAD
field must be INVALID_ARGUMENT and write nothing. The gateway here has no development setting,
so a URL must be https with a public host (docs/webhooks.md)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    BAD,
    EITHER,
    GOOD,
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
    text_verdict,
    texts,
    valid_ids,
)

EVENT_TYPES = ["erasure.completed", "job.completed", "job.failed", "job.cancelled"]
GOOD_URLS = [
    "https://hooks.example.com/mixip",
    "https://hooks.example.com:8443/a/b?x=1",
    "https://8.8.8.8/hooks",
    "https://[2001:4860::8888]/hooks",
]
BAD_URLS = [
    "",
    "http://hooks.example.com/x",  # https only without the development setting
    "ftp://hooks.example.com/x",
    "hooks.example.com/x",
    "https:///x",
    "https://user:pw@hooks.example.com/x",
    "https://hooks.example.com/x#frag",
    "https://hooks.example.com:99999/x",
    "https://hooks.example.com/a b",
    "https://hooks.exämple.com/x",
    "https://[::1/x",
    "https://127.0.0.1/x",
    "https://10.0.0.1/x",
    "https://172.16.0.1/x",
    "https://192.168.1.1/x",
    "https://100.64.0.1/x",
    "https://169.254.169.254/latest/meta-data",
    "https://0.0.0.0/x",
    "https://224.0.0.1/x",
    "https://[::1]/x",
    "https://[fe80::1]/x",
    "https://[fc00::1]/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://[ff02::1]/x",
    "https://localhost/x",
    "https://api.localhost/x",
    "https://hooks.example.com/" + "a" * 2048,
]
urls = st.one_of(
    st.sampled_from(GOOD_URLS),
    st.sampled_from(BAD_URLS),
    texts,
    st.builds("https://{}/{}".format, st.sampled_from(["hooks.example.com", "8.8.4.4"]), texts),
)


def url_verdict(url: str) -> int:
    if url in GOOD_URLS:
        return GOOD
    if url in BAD_URLS or not url.startswith("https://") or len(url) > 2048:
        return BAD
    return EITHER  # the contract's finer points (characters, hosts) are the gateway's


def event_types_verdict(types: list[str]) -> int:
    return GOOD if len(types) <= 8 and set(types) <= set(EVENT_TYPES) else BAD


event_type_lists = st.lists(st.sampled_from(EVENT_TYPES) | texts, max_size=10)
ADDED = {"gateway.gateway_webhooks", "gateway.gateway_talent_keys"}


@_settings(120)
@given(
    fields=request_fields(
        valid={
            "url": st.sampled_from(GOOD_URLS),
            "event_types": st.lists(st.sampled_from(EVENT_TYPES), max_size=3),
            "request_id": st.just(""),
        },
        wild={"url": urls, "event_types": event_type_lists, "request_id": texts},
    )
)
@example(fields={"url": "https://127.0.0.1/x", "event_types": [], "request_id": ""})
def test_add_webhook(harness, fields):
    request = pb.AddWebhookRequest(**fields)
    harness.case(
        "AddWebhook",
        _call(harness.stub.AddWebhook, request, harness.meta),
        # past 16 webhooks the account is full; a request id reused with another URL is refused
        allowed=expected(
            url_verdict(request.url),
            event_types_verdict(list(request.event_types)),
            text_verdict(request.request_id, 128, required=False),
            ok={OK, PRECONDITION},
        ),
        writes=ADDED,
        fields={"url", "event_types", "request_id"},
    )


def _none_listed(reply: pb.ListWebhooksResponse) -> None:
    assert list(reply.webhooks) == [], "the harness's account has no webhook"


@_settings(80)
@given(fields=request_fields(valid=PAGING_VALID, wild=PAGING_WILD))
def test_list_webhooks(harness, fields):
    request = pb.ListWebhooksRequest(**fields)
    harness.case(
        "ListWebhooks",
        _call(harness.stub.ListWebhooks, request, harness.meta),
        allowed=expected(
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={OK},
        ),
        on_ok=_none_listed,
        fields={"page_size", "page_token"},
    )


@_settings(80)
@given(rpc=st.sampled_from(["RemoveWebhook", "TestWebhook"]), webhook_id=ids)
def test_remove_and_test_webhook(harness, rpc, webhook_id):
    request = getattr(pb, f"{rpc}Request")(webhook_id=webhook_id)
    harness.case(
        rpc,
        _call(getattr(harness.stub, rpc), request, harness.meta),
        allowed=expected(id_verdict(webhook_id), ok={NOT_FOUND}),  # the account has none
        fields={"webhook_id"},
    )


@_settings(80)
@given(
    fields=request_fields(
        valid={"webhook_id": valid_ids, "request_id": st.just("")},
        wild={"webhook_id": ids, "request_id": texts},
    )
)
def test_rotate_webhook_secret(harness, fields):
    request = pb.RotateWebhookSecretRequest(**fields)
    harness.case(
        "RotateWebhookSecret",
        _call(harness.stub.RotateWebhookSecret, request, harness.meta),
        allowed=expected(
            id_verdict(request.webhook_id),
            text_verdict(request.request_id, 128, required=False),
            ok={NOT_FOUND},
        ),
        fields={"webhook_id", "request_id"},
    )
