"""The review page's server-side sessions: random ids, idle expiry, sign-out, a bounded store."""

from __future__ import annotations

from datetime import timedelta

from mixip.web import sessions as sessions_module
from mixip.web.sessions import Sessions


def test_a_session_is_forgotten_after_its_idle_time_and_each_visit_starts_it_over(clock):
    store = Sessions(clock, idle=timedelta(hours=8))
    session = store.new(api_key="mixip_key")

    clock.advance(hours=7)
    assert store.get(session.session_id) is session  # a visit: the idle time starts over
    clock.advance(hours=7)
    assert store.get(session.session_id) is session
    clock.advance(hours=8, seconds=1)
    assert store.get(session.session_id) is None
    assert len(store) == 0


def test_ids_and_csrf_tokens_are_random_and_distinct_and_sign_out_forgets_at_once(clock):
    store = Sessions(clock)
    first, second = store.new(), store.new(api_key="k")

    assert len({first.session_id, first.csrf_token, second.session_id, second.csrf_token}) == 4
    assert len(first.session_id) >= 43  # 32 random bytes, url-safe base64
    assert not first.signed_in and second.signed_in
    store.end(second.session_id)
    assert store.get(second.session_id) is None and store.get(first.session_id) is first
    assert store.get("") is None and store.get("not-a-session") is None


def test_the_store_is_bounded_by_dropping_the_longest_idle_session(clock, monkeypatch):
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS", 3)
    store = Sessions(clock)
    oldest = store.new()
    clock.advance(minutes=1)
    kept = [store.new(), store.new()]

    store.new()

    assert len(store) == 3 and store.get(oldest.session_id) is None
    assert all(store.get(s.session_id) is s for s in kept)


def test_a_flood_of_signed_out_sessions_never_evicts_a_signed_in_one(clock, monkeypatch):
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS", 3)
    store = Sessions(clock)
    person = store.new(api_key="mixip_key")  # the longest idle of all
    clock.advance(minutes=1)
    for _ in range(50):  # GET / over and over: a sign-in form's session each time
        store.new()
        clock.advance(seconds=1)

    assert len(store) == 3 and store.get(person.session_id) is person
    # with no signed-out session left to drop, the longest idle signed-in one goes
    others = [store.new(api_key="k2"), store.new(api_key="k3")]
    clock.advance(minutes=1)
    store.new(api_key="k4")
    assert store.get(person.session_id) is None
    assert all(store.get(s.session_id) is s for s in others)
