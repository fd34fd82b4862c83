"""The label rules, without I/O."""

import pytest

from mixip.common.v1 import common_pb2 as c
from services.matcher.engines.base import Candidate
from services.matcher.labels import Thresholds, label_face, label_track, talents_to_check

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


# -- a track: one person over several frames ----------------------------------------------------


def track_label(frames, biometric=ALL, usage=ALL):
    return label_track(frames, T, biometric_active=biometric, usage_active=usage)


def test_a_track_is_labelled_by_its_best_frame_not_its_first():
    # The audience case: a weak first sighting, a clear match a few frames later.
    frames = [[cand("ada", 0.46)], [cand("ada", 0.50)], [cand("ada", 0.57)], [cand("ada", 0.49)]]

    label, decisive = track_label(frames)

    assert (label.label, label.reason, label.talent_id) == (
        c.FACE_LABEL_CLEARED,
        c.LABEL_REASON_CONSENTED_MATCH,
        "ada",
    )
    assert (label.similarity, decisive) == (0.57, 2)


def test_a_clear_frame_beats_a_higher_but_ambiguous_one_of_the_same_talent():
    frames = [[cand("ada", 0.70), cand("bob", 0.68)], [cand("ada", 0.62), cand("bob", 0.3)]]

    label, decisive = track_label(frames)

    assert (label.label, label.talent_id, decisive) == (c.FACE_LABEL_CLEARED, "ada", 1)


def test_the_most_similar_talent_decides_who_the_track_is():
    # Bob is cleared in one frame but Ada, without project consent, resembles the track far
    # more: the track is Ada's, so it is not cleared.
    frames = [[cand("ada", 0.82)], [cand("bob", 0.60)]]

    label, decisive = track_label(frames, usage={"bob"})

    assert (label.label, label.reason, label.talent_id, decisive) == (
        c.FACE_LABEL_POSSIBLE,
        c.LABEL_REASON_NO_PROJECT_CONSENT,
        "ada",
        0,
    )


def test_two_talents_named_in_different_frames_within_the_margin_are_ambiguous():
    frames = [[cand("ada", 0.70)], [cand("bob", 0.67)], [cand("ada", 0.66)]]

    label, decisive = track_label(frames)

    assert (label.label, label.reason, label.talent_id) == (
        c.FACE_LABEL_POSSIBLE,
        c.LABEL_REASON_AMBIGUOUS,
        "ada",
    )
    assert decisive == 0


def test_a_track_nobody_matches_is_unknown_with_its_closest_similarity_and_no_frame():
    frames = [[cand("ada", 0.2)], [], [cand("bob", 0.31)]]

    label, decisive = track_label(frames)

    assert (label.label, label.talent_id, label.similarity, decisive) == (
        c.FACE_LABEL_UNKNOWN,
        "",
        0.31,
        None,
    )


def test_a_track_never_matches_a_talent_without_biometric_consent():
    frames = [[cand("ada", 0.9)], [cand("ada", 0.8)]]

    label, decisive = track_label(frames, biometric={"bob"})

    assert (label.label, label.talent_id, decisive) == (c.FACE_LABEL_UNKNOWN, "", None)
