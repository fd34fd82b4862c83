"""The matcher's peers: one Protocol port per peer service, and its gRPC adapter (where
batching to the peer's limits happens). The matcher has one peer, the consent service.

The adapter caches each account's answers under the account's consent version, which the
consent service changes in the transaction of every record and erasure of the account. Every
check still asks consent, with the cached version and only the questions the cache lacks:
while the version is unchanged, consent reads one row and answers nothing else, and the cache
answers the rest; otherwise the cache is dropped and everything is asked again. So an answer is
never older than the consent version read during the match that uses it (docs/design.md,
"Consent checks and their cache"). Talent ids stay in this process's memory, nowhere else."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.runtime.limits import MAX_BATCH

_BIOMETRIC = consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING
_USAGE = consent_pb2.CONSENT_SCOPE_FACE_USAGE
_ACTIVE = consent_pb2.CONSENT_STATE_ACTIVE

_Question = tuple[str, consent_pb2.ConsentScope.ValueType, str]  # talent, scope, project ("")


class ConsentPort(Protocol):
    """What the matcher asks the consent service."""

    def biometric_active(self, account_id: str, talent_id: str) -> bool: ...

    def active_sets(
        self, account_id: str, talent_ids: set[str], project_id: str
    ) -> tuple[set[str], set[str]]:
        """(talents with biometric consent, talents with face-usage consent for the project),
        in one batched call."""
        ...


class ConsentClient:
    """ConsentPort over the consent service's generated stub."""

    def __init__(self, channel: grpc.Channel, cache: ConsentCache | None = None) -> None:
        self.stub = consent_pb2_grpc.ConsentServiceStub(channel)
        self.cache = cache or ConsentCache()
        # Tests pause a check at its step boundaries through this hook (a no-op here).
        self.checkpoint: Callable[[str], None] = lambda name: None

    def biometric_active(self, account_id: str, talent_id: str) -> bool:
        reply = self.stub.CheckConsent(
            consent_pb2.CheckConsentRequest(
                account_id=account_id, talent_id=talent_id, scope=_BIOMETRIC
            )
        )
        return reply.state == _ACTIVE

    def active_sets(
        self, account_id: str, talent_ids: set[str], project_id: str
    ) -> tuple[set[str], set[str]]:
        wanted = [(talent, _BIOMETRIC, "") for talent in sorted(talent_ids)] + [
            (talent, _USAGE, project_id) for talent in sorted(talent_ids)
        ]
        active = self._answers(account_id, wanted)
        biometric = {talent for talent in talent_ids if active[talent, _BIOMETRIC, ""]}
        usage = {talent for talent in talent_ids if active[talent, _USAGE, project_id]}
        return biometric, usage

    def _answers(self, account_id: str, wanted: Sequence[_Question]) -> dict[_Question, bool]:
        """Whether each consent is active: from the cache while the account's version is
        unchanged (consent answers only what the cache lacks), else all asked again."""
        cached = self.cache.get(account_id)
        self.checkpoint("consent.cached")
        if cached is not None:
            missing = [q for q in wanted if q not in cached.active]
            version, unchanged, fresh = self._ask(account_id, missing, cached.version)
            if unchanged:
                self.checkpoint("consent.answered")
                return self.cache.put(account_id, version, {**cached.active, **fresh})
        version, _, fresh = self._ask(account_id, wanted, "")
        self.checkpoint("consent.answered")
        return self.cache.put(account_id, version, fresh)

    def _ask(
        self, account_id: str, questions: Sequence[_Question], cached_version: str
    ) -> tuple[str, bool, dict[_Question, bool]]:
        """(the account's version, whether it is still `cached_version`, whether each question's
        consent is active), in one call unless > 1000 questions. The version is the first
        call's: read before any answer, so no answer is older than it."""
        replies = [
            self.stub.BatchCheckConsent(
                consent_pb2.BatchCheckConsentRequest(
                    account_id=account_id,
                    queries=[
                        consent_pb2.ConsentQuery(talent_id=t, scope=s, project_id=p)
                        for t, s, p in questions[start : start + MAX_BATCH]
                    ],
                    cached_version=cached_version,
                )
            )
            for start in range(0, max(len(questions), 1), MAX_BATCH)
        ]
        active = {
            (a.query.talent_id, a.query.scope, a.query.project_id): a.state == _ACTIVE
            for reply in replies
            for a in reply.answers
        }
        return replies[0].version, all(r.unchanged for r in replies), active


@dataclass(frozen=True)
class _Cached:
    version: str
    active: dict[_Question, bool]


class ConsentCache:
    """The answers of the most recently checked accounts, each under the consent version they
    were read under; at most `max_answers` answers in all (least recently checked accounts go
    first). Memory only."""

    def __init__(self, max_answers: int = 200_000) -> None:
        self.max_answers = max_answers
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._held = 0  # answers in all entries
        self._lock = threading.Lock()

    def get(self, account_id: str) -> _Cached | None:
        with self._lock:
            entry = self._entries.get(account_id)
            if entry is not None:
                self._entries.move_to_end(account_id)
            return entry

    def put(
        self, account_id: str, version: str, active: dict[_Question, bool]
    ) -> dict[_Question, bool]:
        """Keeps `active` as the account's answers under `version`; a set larger than the
        whole cache, or read under no version (an account that never had a record), is
        answered but not kept."""
        with self._lock:
            if version and len(active) <= self.max_answers:
                earlier = self._entries.pop(account_id, None)
                self._held -= len(earlier.active) if earlier else 0
                while self._entries and self._held + len(active) > self.max_answers:
                    self._held -= len(self._entries.popitem(last=False)[1].active)
                self._entries[account_id] = _Cached(version, active)
                self._held += len(active)
        return active
