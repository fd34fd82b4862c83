"""The matcher's consent cache never lets a match clear a talent on a consent that was revoked
(or erased) before the match: deterministic interleavings with the real matcher and the real
consent service, each on SQLite and PostgreSQL.

A match asks consent with the version its cache holds answers under; consent changes the
account's version in the transaction of every record and erasure. The checks are paused at
their step boundaries ("consent.cached": the cache entry read, nothing asked yet;
"consent.answered": the answers in hand, not yet kept) while a revocation commits."""

from __future__ import annotations

import pytest

from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from services.consent.service import ConsentLedger
from services.matcher.peers import ConsentCache
from tests.integration.matcher.test_matcher_service import (
    ACCOUNT,
    CLEARED,
    PROJECT,
    enroll,
    grant,
    grant_usage,
    match,
)
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome

PHOTO = faces.encode(faces.astronaut(), ".jpg")


def revoke_usage(mesh, clock):
    grant(
        mesh,
        clock,
        "astronaut",
        cpb.CONSENT_SCOPE_FACE_USAGE,
        PROJECT,
        cpb.CONSENT_DECISION_REVOKED,
    )


def revoke_biometric(mesh, clock):
    grant(mesh, clock, "astronaut", decision=cpb.CONSENT_DECISION_REVOKED)


def erase(mesh, clock):
    mesh.consent.stub.EraseTalentConsent(
        cpb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id="astronaut")
    )


CHANGES = {"usage revoked": revoke_usage, "biometrics revoked": revoke_biometric, "erased": erase}


@pytest.fixture
def cleared(mesh, clock):
    """The astronaut enrolled with both consents, and the cache filled by a clearing match."""
    grant(mesh, clock, "astronaut")
    enroll(mesh, "astronaut", faces.astronaut())
    grant_usage(mesh, clock, "astronaut")
    assert label(mesh) == CLEARED
    return mesh


@pytest.fixture
def hooks(mesh) -> Checkpoints:
    hooks = Checkpoints()
    mesh.matcher.app.matcher.consent.checkpoint = hooks
    return hooks


@pytest.fixture
def checks(mesh, monkeypatch) -> list[int]:
    """How many questions each check made the real consent service's ledger answer."""
    asked: list[int] = []
    ledger = mesh.consent.app.ledger
    real = ConsentLedger.versioned_check

    def counted(account_id, keys):
        asked.append(len(keys))
        return real(ledger, account_id, keys)

    monkeypatch.setattr(ledger, "versioned_check", counted)
    return asked


def label(mesh) -> int:
    [face] = match(mesh, PHOTO).faces
    return face.label


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_committed_after_the_cache_was_read_keeps_the_match_from_clearing(
    cleared, hooks, clock, change
):
    pause = hooks.pause_at("consent.cached")
    matching = Outcome(lambda: label(cleared), pause)
    pause.reached()  # the match holds the cached answers (CLEARED) and has asked nothing yet
    CHANGES[change](cleared, clock)
    pause.release()
    assert matching.join().error is None
    assert matching.result != CLEARED
    assert label(cleared) != CLEARED


@pytest.mark.parametrize("change", CHANGES)
def test_answers_read_before_a_change_and_kept_after_it_never_clear_a_later_match(
    cleared, hooks, clock, change
):
    revoke_usage(cleared, clock)
    grant_usage(cleared, clock, "astronaut")  # the version changed: the next match asks again
    pause = hooks.pause_at("consent.answered")
    matching = Outcome(lambda: label(cleared), pause)
    pause.reached()  # active answers read under the old version, not yet kept
    CHANGES[change](cleared, clock)
    pause.release()
    # That match began before the change committed: it may clear. It keeps what it read...
    assert matching.join().error is None and matching.result == CLEARED
    # ...under the version it read them under, which the change replaced.
    assert label(cleared) != CLEARED


@pytest.mark.parametrize("change", ["usage revoked", "biometrics revoked"])
def test_answers_read_while_a_change_commits_never_clear_a_later_match(cleared, clock, change):
    """Consent reads the version before the answers: a change committed between the two
    leaves answers at least as fresh as their version, never older. (Not an erasure: on SQLite
    its scrub after the commit waits for the paused check's read to end.)"""
    hooks = Checkpoints()
    cleared.consent.app.ledger.checkpoint = hooks
    revoke_usage(cleared, clock)
    grant_usage(cleared, clock, "astronaut")  # the version changed: the next match asks again
    pause = hooks.pause_at("check.versioned")
    matching = Outcome(lambda: label(cleared), pause)
    pause.reached()  # consent has read the account's version, not yet the records
    CHANGES[change](cleared, clock)
    pause.release()
    assert matching.join().error is None  # concurrent with the change: either label
    assert label(cleared) != CLEARED


def test_with_a_warm_cache_a_match_makes_consent_read_its_version_and_nothing_else(
    cleared, checks, clock
):
    assert label(cleared) == CLEARED
    assert checks == [0]  # the cached version was confirmed; no question, no talent key opened
    revoke_usage(cleared, clock)
    assert label(cleared) != CLEARED
    assert checks == [0, 0, 2]  # the version changed: asked again, both questions
    assert label(cleared) != CLEARED
    assert checks == [0, 0, 2, 0]


def test_the_cache_is_per_account(mesh, clock, checks):
    for account in (ACCOUNT, "acct-b"):
        grant(mesh, clock, "astronaut", account=account)
        enroll(mesh, "astronaut", faces.astronaut(), account=account)
        grant_usage(mesh, clock, "astronaut", account=account)
    checks.clear()  # enrollments check consent too
    assert [f.label for f in match(mesh, PHOTO).faces] == [CLEARED]
    grant(
        mesh,
        clock,
        "astronaut",
        cpb.CONSENT_SCOPE_FACE_USAGE,
        PROJECT,
        cpb.CONSENT_DECISION_REVOKED,
        account="acct-b",
    )
    assert [f.label for f in match(mesh, PHOTO, account="acct-b").faces] == [
        common.FACE_LABEL_POSSIBLE
    ]
    assert [f.label for f in match(mesh, PHOTO).faces] == [CLEARED]
    assert checks == [2, 2, 0]


def test_the_cache_keeps_the_most_recently_checked_accounts_within_its_bound():
    cache = ConsentCache(max_answers=4)
    bio = cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING

    def answers(*talents):
        return {(t, bio, ""): True for t in talents}

    cache.put("a", "v", answers("t1", "t2"))
    cache.put("b", "v", answers("t1"))
    cache.get("a")  # checked again: "b" is now the least recent
    cache.put("c", "v", answers("t1", "t2"))
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("a", "w", answers("t3"))  # replaced, not added to
    assert cache.get("a").active == answers("t3") and cache.get("c")
    cache.put("d", "v", answers("t1", "t2", "t3", "t4", "t5"))  # larger than the whole cache
    assert cache.get("d") is None and cache.get("c")
    cache.put("e", "", answers("t1"))  # an account that never had a record
    assert cache.get("e") is None
