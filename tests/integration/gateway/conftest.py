"""Fixtures of the gateway tests."""

from __future__ import annotations

import pytest

from mixip.consent.v1 import consent_pb2 as cpb
from tests.support import faces
from tests.support.gateway_calls import PROJECT, consent, enroll


@pytest.fixture
def studio(gateway, clock):
    """An account whose astronaut is enrolled with consent for film-1."""
    account, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gateway, meta, "astronaut", faces.astronaut())
    return account, meta
