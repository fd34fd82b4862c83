"""The label rules (pure): from a face's candidates and the talents' consents to an advisory
label with its reason. See docs/design.md, "Labels"."""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

from mixip.common.v1 import common_pb2
from services.matcher.engines.base import Candidate

CLEARED = common_pb2.FACE_LABEL_CLEARED
POSSIBLE = common_pb2.FACE_LABEL_POSSIBLE
UNKNOWN = common_pb2.FACE_LABEL_UNKNOWN


@dataclass(frozen=True)
class Thresholds:
    possible: float  # below: UNKNOWN
    cleared: float  # at or above (and unambiguous, consented): CLEARED
    margin: float  # two talents closer than this are ambiguous

    def __post_init__(self) -> None:
        if not self.possible <= self.cleared:
            raise ValueError("the possible threshold must not exceed the cleared threshold")
        if self.margin < 0:
            raise ValueError("the ambiguity margin must not be negative")


@dataclass(frozen=True)
class Label:
    label: int
    reason: int
    talent_id: str  # "" for UNKNOWN
    similarity: float


def best_per_talent(candidates: Iterable[Candidate]) -> list[tuple[str, float]]:
    """Each talent once, with its best face's similarity, best first."""
    best: dict[str, float] = {}
    for c in candidates:
        if c.similarity > best.get(c.talent_id, float("-inf")):
            best[c.talent_id] = c.similarity
    return sorted(best.items(), key=lambda item: item[1], reverse=True)


def label_face(
    candidates: Iterable[Candidate],
    thresholds: Thresholds,
    *,
    biometric_active: Set[str],
    usage_active: Set[str],
) -> Label:
    """Talents without active biometric consent are not matched at all (their vectors are on
    their way out); the rest decide the label. Only talents at or above the possible threshold
    need their consent known (`talents_to_check`): weaker ones only set an UNKNOWN's score."""
    ranked = [
        (t, s)
        for t, s in best_per_talent(candidates)
        if s < thresholds.possible or t in biometric_active
    ]
    if not ranked or ranked[0][1] < thresholds.possible:
        return Label(UNKNOWN, common_pb2.LABEL_REASON_NO_MATCH, "", ranked[0][1] if ranked else 0.0)
    talent, similarity = ranked[0]
    if (
        len(ranked) > 1
        and ranked[1][1] >= thresholds.possible
        and similarity - ranked[1][1] < thresholds.margin
    ):
        return Label(POSSIBLE, common_pb2.LABEL_REASON_AMBIGUOUS, talent, similarity)
    if similarity < thresholds.cleared:
        return Label(POSSIBLE, common_pb2.LABEL_REASON_LOW_SIMILARITY, talent, similarity)
    if talent not in usage_active:
        return Label(POSSIBLE, common_pb2.LABEL_REASON_NO_PROJECT_CONSENT, talent, similarity)
    return Label(CLEARED, common_pb2.LABEL_REASON_CONSENTED_MATCH, talent, similarity)


def talents_to_check(candidates: Iterable[Candidate], thresholds: Thresholds) -> set[str]:
    """The talents whose consent can change a label: those at or above the possible threshold."""
    return {c.talent_id for c in candidates if c.similarity >= thresholds.possible}


_RANK: dict[int, int] = {UNKNOWN: 0, POSSIBLE: 1, CLEARED: 2}


def label_track(
    per_observation: Sequence[Iterable[Candidate]],
    thresholds: Thresholds,
    *,
    biometric_active: Set[str],
    usage_active: Set[str],
) -> tuple[Label, int | None]:
    """The label of one person seen in several frames, and the frame (index) that decides it.

    Each frame is labelled as a photo would be. The talent the track most resembles (the
    highest similarity named in any frame) is who it is; its best frame decides the label
    (cleared before possible, then by similarity), so a face that clears in one good frame is
    cleared. If another talent is named in some frame within the ambiguity margin of that
    similarity, the track is ambiguous. With no talent named, the track is UNKNOWN with the
    closest similarity any frame reached, and no deciding frame (None).
    """
    labels = [
        label_face(c, thresholds, biometric_active=biometric_active, usage_active=usage_active)
        for c in per_observation
    ]
    named = [i for i, label in enumerate(labels) if label.talent_id]
    if not named:
        closest = max((label.similarity for label in labels), default=0.0)
        return Label(UNKNOWN, common_pb2.LABEL_REASON_NO_MATCH, "", closest), None
    top = max(named, key=lambda i: labels[i].similarity)
    talent = labels[top].talent_id
    decisive = max(
        (i for i in named if labels[i].talent_id == talent),
        key=lambda i: (_RANK[labels[i].label], labels[i].similarity),
    )
    rival = max(
        (labels[i].similarity for i in named if labels[i].talent_id != talent), default=None
    )
    if rival is not None and labels[top].similarity - rival < thresholds.margin:
        ambiguous = Label(
            POSSIBLE, common_pb2.LABEL_REASON_AMBIGUOUS, talent, labels[decisive].similarity
        )
        return ambiguous, decisive
    return labels[decisive], decisive
