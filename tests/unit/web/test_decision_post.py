"""The review page's decision POST refuses what it cannot record without an error of its own:
a signed-out session (whose CSRF token is valid: the sign-in form has one) is sent to sign in,
and a face index no face can have is 404. Neither reaches the gateway: the page here has a
channel to a port where nothing listens, so a call would fail as UNAVAILABLE, not as asserted."""

from __future__ import annotations

import http.client
import logging
from urllib.parse import urlencode, urlsplit

import grpc
import pytest

from mixip.web.app import create_app
from mixip.web.page import SESSION_COOKIE
from mixip.web.sessions import Session, Sessions
from tests.support.web import serving


@pytest.fixture
def page():
    sessions = Sessions()
    channel = grpc.insecure_channel("127.0.0.1:1")  # nothing listens: no call may be made
    try:
        with serving(create_app(channel, sessions)) as base:
            yield base, sessions
    finally:
        channel.close()


def post_decision(base: str, session: Session, face_index: int) -> http.client.HTTPResponse:
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    body = urlencode({"csrf_token": session.csrf_token, "decision": "blocked", "note": ""})
    connection.request(
        "POST",
        f"/media/med_1/faces/{face_index}/decision",
        body=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": base,
            "Cookie": f"{SESSION_COOKIE}={session.session_id}",
        },
    )
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_a_signed_out_session_with_its_valid_token_is_sent_to_sign_in(page, caplog):
    base, sessions = page
    signed_out = sessions.new()  # the sign-in form's session: a CSRF token, no key
    with caplog.at_level(logging.ERROR):
        response = post_decision(base, signed_out, 0)
    assert (response.status, response.getheader("Location")) == (303, "/")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("face_index", [2**31, 2**63, 10**40])
def test_a_face_index_beyond_any_face_is_not_found(page, caplog, face_index):
    base, sessions = page
    signed_in = sessions.new(api_key="mixip_0123456789abcdef_secret")
    with caplog.at_level(logging.ERROR):
        response = post_decision(base, signed_in, face_index)
    assert response.status == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
