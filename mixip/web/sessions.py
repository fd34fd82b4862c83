"""Sessions of the review page, kept server-side only.

The browser holds a random session id (32 bytes from `secrets`) in an HttpOnly, SameSite=Strict
cookie; the API key it signed in with stays in this process's memory, never in a cookie, a page
or a log. Each session carries its own CSRF token, put in every form and checked on every POST.
A session idle for longer than `idle` is forgotten; signing out forgets it at once. A restart of
the page forgets every session (people sign in again).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mixip.runtime.times import Clock, utcnow

IDLE = timedelta(hours=8)
# Sessions kept at most (the longest idle signed-out one goes first, a signed-in one only when
# none is signed out): a flood of sign-in pages can neither grow the process without bound nor
# sign anyone out.
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Notice:
    """A message shown once on the next page: next to a face (where the person just decided),
    else at the top."""

    text: str
    face: int | None = None
    error: bool = False


@dataclass
class Session:
    session_id: str
    csrf_token: str
    last_seen: datetime
    # None until signed in (the sign-in form's session only carries its CSRF token).
    api_key: str | None = None
    # Shown once on the next page (e.g. "decision recorded").
    flash: list[Notice] = field(default_factory=list)

    @property
    def signed_in(self) -> bool:
        return self.api_key is not None


class Sessions:
    def __init__(
        self,
        clock: Clock = utcnow,
        idle: timedelta = IDLE,
        token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self.clock = clock
        self.idle = idle
        self.token = token
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, api_key: str | None = None) -> Session:
        """A fresh session (a new id and CSRF token: signing in never reuses the old id)."""
        now = self.clock()
        session = Session(self.token(), self.token(), now, api_key)
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:
                # signed-out sessions go first: a flood of sign-in pages signs no one out
                oldest = min(self._sessions.values(), key=lambda s: (s.signed_in, s.last_seen))
                del self._sessions[oldest.session_id]
            self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle time starts over), or None."""
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self.idle:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expire(self, now: datetime) -> None:
        stale = [k for k, s in self._sessions.items() if now - s.last_seen > self.idle]
        for session_id in stale:
            del self._sessions[session_id]
