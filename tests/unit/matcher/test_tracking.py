"""Linking per-frame detections into tracks by appearance and position: pure logic on
synthetic boxes and vectors."""

from __future__ import annotations

import numpy as np
import pytest

from services.matcher.engines.base import Box, DetectedFace
from services.matcher.video import Tracker, link_tracks

INTERVAL = 0.5


def face(x: int, y: int = 100, size: int = 100, score: float = 0.9) -> DetectedFace:
    return DetectedFace(box=Box(x, y, size, size), score=score)


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def people(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: unit(rng.normal(size=128)) for name in ("ann", "bob")}


def noisy(vector: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another sighting of the same face: cosine about 0.9 with `vector`."""
    return unit(vector + rng.normal(scale=0.04, size=vector.shape))


def times(n: int, start: float = 0.0) -> list[float]:
    return [start + i * INTERVAL for i in range(n)]


def test_two_people_crossing_keep_their_own_tracks(people, rng):
    # Ann walks right, Bob walks left; at frame 4 their boxes coincide and at frames 3-5 each
    # one's last box overlaps the other as much as their own, so only the vectors can tell.
    frames = []
    for i, t in enumerate(times(9)):
        ann = (face(100 + 40 * i), noisy(people["ann"], rng))
        bob = (face(420 - 40 * i), noisy(people["bob"], rng))
        frames.append((t, [bob, ann] if i % 2 else [ann, bob]))

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert len(tracks) == 2
    for track, name in zip(tracks, ("ann", "bob"), strict=True):
        assert len(track.observations) == 9
        assert track.ranges == ((0.0, 4.0),)
        for observation in track.observations:
            assert float(np.dot(observation.signature, people[name])) > 0.8
        assert float(np.dot(track.appearance, people[name])) > 0.95
        assert track.appearance.dtype == np.float32
        assert np.linalg.norm(track.appearance) == pytest.approx(1.0, abs=1e-5)


def test_a_face_that_leaves_and_returns_is_one_track_with_two_ranges(people, rng):
    # 1.0 -> 2.0 is within the 1.5 s gap a track stays live, but beyond 1.5 intervals: a new
    # range. 3.0 -> 5.0 leaves the track dormant, and only her face brings it back, anywhere.
    seen = [*times(3), *times(3, start=2.0)]
    frames = [(t, [(face(200), noisy(people["ann"], rng))]) for t in seen]
    frames += [(t, [(face(520), noisy(people["ann"], rng))]) for t in times(2, start=5.0)]

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert [track.ranges for track in tracks] == [((0.0, 1.0), (2.0, 3.0), (5.0, 5.5))]


def test_someone_else_in_a_dormant_tracks_place_starts_their_own(people, rng):
    frames = [(t, [(face(200), noisy(people["ann"], rng))]) for t in times(3)]
    frames += [(t, [(face(200), noisy(people["bob"], rng))]) for t in times(2, start=4.0)]

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert [track.ranges for track in tracks] == [((0.0, 1.0),), ((4.0, 4.5),)]


def test_without_vectors_a_long_gap_closes_the_track_and_max_gap_is_configurable():
    frames = [(t, [(face(200), f"crop-{t}".encode())]) for t in (0.0, 0.5, 3.0)]

    assert len(link_tracks(frames, interval_seconds=INTERVAL)) == 2
    assert len(link_tracks(frames, interval_seconds=INTERVAL, max_gap_seconds=3.0)) == 1


def test_position_alone_never_links_two_people(people, rng):
    # One place in the frame, two people in turn (a cut, or one leaning in front of the
    # other): the boxes coincide, the faces do not, so the track splits at the change.
    frames = [(t, [(face(200), noisy(people["ann"], rng))]) for t in times(4)]
    frames += [(t, [(face(205), noisy(people["bob"], rng))]) for t in times(4, start=2.0)]

    ann, bob = link_tracks(frames, interval_seconds=INTERVAL)

    assert (ann.ranges, bob.ranges) == (((0.0, 1.5),), ((2.0, 3.5),))
    assert all(float(np.dot(o.signature, people["ann"])) > 0.8 for o in ann.observations)
    assert all(float(np.dot(o.signature, people["bob"])) > 0.8 for o in bob.observations)


def test_a_neighbour_seen_now_and_then_is_not_absorbed_by_the_track_beside_him(people, rng):
    # The audience clip: Bob sits so close to Ann that his box overlaps hers (IoU >= 0.3),
    # and the detector finds him only in some frames. Overlap used to hand him her track.
    ann_box, bob_box = face(200, size=120), face(250, size=120)
    assert ann_box.box.iou(bob_box.box) >= 0.3
    frames = []
    for i, t in enumerate(times(8)):
        seen = [(ann_box, noisy(people["ann"], rng))] if i % 3 != 1 else []
        if i % 2:
            seen.append((bob_box, noisy(people["bob"], rng)))
        frames.append((t, seen))

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert len(tracks) == 2
    for track, name in zip(tracks, ("ann", "bob"), strict=True):
        assert all(float(np.dot(o.signature, people[name])) > 0.8 for o in track.observations)
    assert [o.t for o in tracks[1].observations] == [0.5, 1.5, 2.5, 3.5]


def test_two_people_who_swap_places_keep_their_own_tracks(people, rng):
    frames = []
    for t in times(8):
        ann, bob = (face(100), face(400)) if t < 2.0 else (face(400), face(100))
        frames.append((t, [(ann, noisy(people["ann"], rng)), (bob, noisy(people["bob"], rng))]))

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert [track.ranges for track in tracks] == [((0.0, 3.5),), ((0.0, 3.5),)]
    for track, name in zip(tracks, ("ann", "bob"), strict=True):
        assert all(float(np.dot(o.signature, people[name])) > 0.8 for o in track.observations)
        assert [o.face.box.x for o in track.observations][3:5] == (
            [100, 400] if name == "ann" else [400, 100]
        )


def test_the_tracker_says_which_faces_are_newly_on_screen(people, rng):
    tracker = Tracker(interval_seconds=INTERVAL)
    ann = [(face(200), noisy(people["ann"], rng)) for _ in range(4)]
    bob = (face(500), noisy(people["bob"], rng))

    assert tracker.add(0.0, [ann[0]]) == [True]  # a new track
    assert tracker.add(0.5, [ann[1], bob]) == [False, True]  # continues; someone new
    assert tracker.add(1.0, []) == []
    assert tracker.add(4.0, [ann[2]]) == [True]  # back after a gap: on screen anew
    assert tracker.add(4.5, [ann[3]]) == [False]
    assert [len(track.observations) for track in tracker.tracks()] == [4, 1]


def test_a_similar_face_links_without_overlap(people, rng):
    # A cut: the same person jumps across the frame; different people never link.
    frames = [
        (0.0, [(face(50), noisy(people["ann"], rng))]),
        (0.5, [(face(500), noisy(people["ann"], rng))]),
        (1.0, [(face(50), noisy(people["bob"], rng))]),
    ]

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert [track.ranges for track in tracks] == [((0.0, 0.5),), ((1.0, 1.0),)]
    assert [o.face.box.x for o in tracks[0].observations] == [50, 500]


def test_bytes_signatures_link_by_box_overlap_only():
    frames = [
        (0.0, [(face(50), b"left-0"), (face(400), b"right-0")]),
        (0.5, [(face(60, score=0.99), b"left-1"), (face(410), b"right-1")]),
        # The same bytes but far from every live box: a new track, not the left one.
        (1.0, [(face(230), b"left-1")]),
    ]

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert [[o.signature for o in track.observations] for track in tracks] == [
        [b"left-0", b"left-1"],
        [b"right-0", b"right-1"],
        [b"left-1"],
    ]
    assert tracks[0].clearest.signature == b"left-1"
    assert tracks[0].appearance is None


def test_clearest_is_highest_score_times_area(people):
    vector = people["ann"]
    small_sure = face(200, size=100, score=0.99)
    large_unsure = face(190, size=120, score=0.8)  # 0.8 x 14400 > 0.99 x 10000
    frames = [(0.0, [(small_sure, vector)]), (0.5, [(large_unsure, vector)])]

    (track,) = link_tracks(frames, interval_seconds=INTERVAL)

    assert track.clearest.face is large_unsure
    assert track.clearest.t == 0.5


def test_tracks_are_ordered_by_first_appearance(people, rng):
    frames = [
        (0.0, [(face(400), noisy(people["bob"], rng))]),
        (0.5, [(face(50, size=200), noisy(people["ann"], rng)), (face(400), people["bob"])]),
    ]

    tracks = link_tracks(frames, interval_seconds=INTERVAL)

    assert [track.ranges[0][0] for track in tracks] == [0.0, 0.5]
    assert float(np.dot(tracks[0].appearance, people["bob"])) > 0.9


def test_frames_out_of_order_are_refused():
    frames = [(1.0, [(face(0), b"a")]), (0.5, [(face(0), b"a")])]

    with pytest.raises(ValueError, match="out of time order"):
        link_tracks(frames, interval_seconds=INTERVAL)


def test_fragments_of_one_person_that_never_share_a_frame_are_joined(people, rng):
    # Ann jumps across the frame with her head turned (cosine 0.45 to her track: too unlike
    # to continue it without overlap), so a second track starts and she continues in it.
    ann = people["ann"]
    other = unit(rng.normal(size=128))
    other = unit(other - float(np.dot(other, ann)) * ann)  # orthogonal to her
    turned = unit(0.45 * ann + np.sqrt(1 - 0.45**2) * other)
    frames = [(t, [(face(100), noisy(ann, rng))]) for t in times(3)]
    frames.append((1.5, [(face(500), turned)]))
    frames += [(t, [(face(505), noisy(ann, rng))]) for t in times(3, start=2.0)]
    tracker = Tracker(interval_seconds=INTERVAL)
    fresh = [tracker.add(t, detections) for t, detections in frames]

    [track] = tracker.tracks()

    assert fresh[3] == [True]  # at the time, a new track
    assert track.ranges == ((0.0, 3.0),)
    assert [o.t for o in track.observations] == times(7)
    assert float(np.dot(track.appearance, ann)) > 0.9


def test_fragments_seen_in_the_same_frame_are_two_people_however_alike(people, rng):
    twin = noisy(people["ann"], rng)
    frames = [(t, [(face(100), noisy(people["ann"], rng)), (face(500), twin)]) for t in times(2)]

    assert len(link_tracks(frames, interval_seconds=INTERVAL)) == 2
