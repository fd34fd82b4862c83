"""The label rules, without I/O."""

import pytest

from mixip.common.v1 import common_pb2 as c
from services.matcher.engines.base import Candidate
from services.matcher.labels import Thresholds, label_face, talents_to_check

T = Thresholds(possible=0.363, cleared=0.55, margin=0.05)
ALL = {"ada", "bob"}


def cand(talent, similarity, face="f"):
    return Candidate(talent, f"{face}-{talent}-{similarity}", similarity)


@pytest.mark.parametrize(
    ("candidates", "biometric", "usage", "expected"),
    [
        ([], ALL, ALL, (c.FACE_LABEL_UNKNOWN, c.LABEL_REASON_NO_MATCH, "")),
        ([cand("ada", 0.2)], ALL, ALL, (c.FACE_LABEL_UNKNOWN, c.LABEL_REASON_NO_MATCH, "")),
        (
            [cand("ada", 0.45)],
            ALL,
            ALL,
            (c.FACE_LABEL_POSSIBLE, c.LABEL_REASON_LOW_SIMILARITY, "ada"),
        ),
        (
            [cand("ada", 0.8)],
            ALL,
            set(),
            (c.FACE_LABEL_POSSIBLE, c.LABEL_REASON_NO_PROJECT_CONSENT, "ada"),
        ),
        (
            [cand("ada", 0.8)],
            ALL,
            {"ada"},
            (c.FACE_LABEL_CLEARED, c.LABEL_REASON_CONSENTED_MATCH, "ada"),
        ),
        (
            [cand("ada", 0.80), cand("bob", 0.78)],
            ALL,
            ALL,
            (c.FACE_LABEL_POSSIBLE, c.LABEL_REASON_AMBIGUOUS, "ada"),
        ),
        (
            [cand("ada", 0.80), cand("bob", 0.70)],
            ALL,
            ALL,
            (c.FACE_LABEL_CLEARED, c.LABEL_REASON_CONSENTED_MATCH, "ada"),
        ),
        # two faces of one talent are not ambiguous
        (
            [cand("ada", 0.80), cand("ada", 0.79, "g")],
            ALL,
            ALL,
            (c.FACE_LABEL_CLEARED, c.LABEL_REASON_CONSENTED_MATCH, "ada"),
        ),
        # a talent without biometric consent is not matched at all
        ([cand("ada", 0.9)], set(), ALL, (c.FACE_LABEL_UNKNOWN, c.LABEL_REASON_NO_MATCH, "")),
        (
            [cand("ada", 0.9), cand("bob", 0.88)],
            {"bob"},
            {"bob"},
            (c.FACE_LABEL_CLEARED, c.LABEL_REASON_CONSENTED_MATCH, "bob"),
        ),
    ],
)
def test_labels(candidates, biometric, usage, expected):
    label = label_face(candidates, T, biometric_active=biometric, usage_active=usage)
    assert (label.label, label.reason, label.talent_id) == expected


def test_unknown_never_carries_a_talent_but_keeps_its_score():
    label = label_face([cand("ada", 0.3)], T, biometric_active=set(), usage_active=set())
    assert label.talent_id == "" and label.similarity == pytest.approx(0.3)


def test_only_talents_that_can_change_a_label_are_checked():
    assert talents_to_check([cand("ada", 0.9), cand("bob", 0.1)], T) == {"ada"}


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="must not exceed"):
        Thresholds(possible=0.6, cleared=0.5, margin=0.0)
