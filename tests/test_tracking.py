"""The tracker alone, on synthetic scenes whose ground truth knows every shape's identity."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from streamseg.config import TrackConfig
from streamseg.runtime.messages import Detections, MaskRegions
from streamseg.tools.synth import STYLES, Scene
from streamseg.tracking.tracker import StreamTracker, overlap, similarity

FPS = 25.0


def _detections(instances: list, height: int, width: int, scores: list[float] | None = None) -> Detections:
    """The ground truth's own masks as detections (an oracle)."""
    n = len(instances)
    if not n:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                          MaskRegions.empty(height, width))
    masks = MaskRegions.from_full(np.stack([i.mask for i in instances]))
    x, y, w, h = masks.regions.T
    boxes = np.stack([x, y, x + w, y + h], 1).astype(np.float32)
    return Detections(boxes, np.asarray(scores or [0.9] * n, np.float32),
                      np.array([i.label for i in instances], np.int64), masks)


FRAMES_SEEN: dict[int, set[int]] = defaultdict(set)
"""gt track -> the frames :func:`_follow`'s last scene showed it in (detections)."""
SLIVER = 60
"""Pixels under which a shape is only a sliver (entering, leaving, or nearly hidden behind another)."""


def _follow(seed: int, frames: int, width: int = 640, height: int = 360, style: str = "trained",
            hide: dict[int, set[int]] | None = None) -> tuple[dict[int, set[int]], dict[int, set[int]], list, int]:
    """Track a scene's ground truth: (gt track -> tracker ids, tracker id -> gt tracks, events, the id
    changes of an object that was seen whole, more than a sliver, in the frame before).
    ``hide``: frame -> gt track ids left out of that frame's detections."""
    scene = Scene(seed, width, height, STYLES[style])
    tracker = StreamTracker(TrackConfig())
    to_ids, to_gt, events, switches = defaultdict(set), defaultdict(set), [], 0
    FRAMES_SEEN.clear()
    last: dict[int, tuple[int, int, int]] = {}  # gt track -> (frame, id, area) when last seen
    for frame in range(frames):
        _, instances = scene.render()
        shown = [i for i in instances if i.area >= 20 and i.track_id not in (hide or {}).get(frame, set())]
        ids, happened = tracker.update(frame, frame / FPS, _detections(shown, height, width), 0.5)
        events += happened
        for instance, track in zip(shown, ids):
            seen = last.get(instance.track_id)
            switches += bool(seen and seen[0] == frame - 1 and seen[2] >= SLIVER and seen[1] != track)
            last[instance.track_id] = (frame, int(track), int(instance.mask.sum()))
            FRAMES_SEEN[instance.track_id].add(frame)
            to_ids[instance.track_id].add(int(track))
            to_gt[int(track)].add(instance.track_id)
        scene.step()
    return to_ids, to_gt, events + tracker.finish(), switches


@pytest.mark.parametrize("seed, style", [(401, "trained"), (402, "crowded"), (403, "fast"), (404, "small"),
                                         (405, "same-colour"), (410, "crowded"), (411, "fast")])
def test_oracle_detections_keep_one_id_per_object(seed: int, style: str) -> None:
    """Fed the exact masks, no id is ever given to two objects, and an object seen whole in one frame
    keeps its id in the next. (A sliver may not: one entering fast, or peeking from behind another.)"""
    to_ids, to_gt, _, switches = _follow(seed, 150, style=style)
    assert len(to_ids) >= 5
    assert all(len(gt) == 1 for gt in to_gt.values()) and switches == 0, (switches, dict(to_ids))


def test_an_object_hidden_for_a_moment_keeps_its_id() -> None:
    """Left out of the detections for 10 frames (0.4 s, under max_age_s), it comes back with its id;
    its motion carried its mask on meanwhile."""
    first = _follow(406, 60)[0]
    target = next(t for t in first if len(first[t]) == 1 and set(range(15, 36)) <= FRAMES_SEEN[t])
    hidden = {frame: {target} for frame in range(20, 30)}
    to_ids, to_gt, events, _ = _follow(406, 60, hide=hidden)
    assert FRAMES_SEEN[target] >= {19, 30} and not FRAMES_SEEN[target] & set(range(20, 30))
    assert len(to_ids[target]) == 1 and all(len(gt) == 1 for gt in to_gt.values())
    assert not any(e.kind == "end" and e.track_id in to_ids[target] and e.last_frame < 59 for e in events)


def test_a_track_ends_after_max_age_and_a_new_one_starts() -> None:
    hidden = {frame: set(range(1, 100)) for frame in range(20, 50)}  # everything hidden for 1.2 s
    to_ids, _, events, _ = _follow(407, 60, hide=hidden)
    ended = [e for e in events if e.kind == "end" and e.last_frame == 19]
    assert ended and all(e.first_frame <= 19 and e.duration_s == pytest.approx((e.last_frame - e.first_frame) / FPS)
                         for e in ended)
    assert any(len(ids) == 2 for ids in to_ids.values())  # seen before and after: a second id


def test_a_low_score_dip_keeps_the_id_but_is_not_written_out() -> None:
    scene, tracker = Scene(408, 320, 240), StreamTracker(TrackConfig())
    kept = None
    for frame in range(12):
        _, instances = scene.render()
        instances = [i for i in instances if i.area >= 20]
        scores = [0.3 if frame in (5, 6) else 0.9] + [0.9] * (len(instances) - 1)
        ids, _ = tracker.update(frame, frame / FPS, _detections(instances, 240, 320, scores), 0.5)
        if frame in (5, 6):
            assert ids[0] == -1  # below model.score_thresh: not written out
        elif kept is None:
            kept = ids[0]
        else:
            assert ids[0] == kept
        scene.step()
    below = tracker.update(12, 12 / FPS, _detections(instances[:1], 240, 320, [0.05]), 0.5)[0]
    assert below.tolist() == [-1]  # under track.low_score: not even matched


def test_time_going_backwards_starts_every_track_afresh() -> None:
    scene, tracker = Scene(409, 320, 240), StreamTracker(TrackConfig())
    _, instances = scene.render()
    dets = _detections([i for i in instances if i.area >= 20], 240, 320)
    first, _ = tracker.update(0, 5.0, dets, 0.5)
    again, events = tracker.update(1, 0.0, dets, 0.5)  # a --loop restart
    assert set(first.tolist()).isdisjoint(again.tolist())
    assert sorted(e.track_id for e in events if e.kind == "end") == sorted(first.tolist())


def test_a_jump_forward_in_time_ends_the_tracks_before_it() -> None:
    """Past max_age_s without a frame (a stall, a reconnect, a timestamp jump): the same masks get new ids."""
    scene, tracker = Scene(409, 320, 240), StreamTracker(TrackConfig())
    _, instances = scene.render()
    dets = _detections([i for i in instances if i.area >= 20], 240, 320)
    first, _ = tracker.update(0, 0.0, dets, 0.5)
    assert tracker.update(1, 0.5, dets, 0.5)[0].tolist() == first.tolist()  # within max_age_s: the same
    later, events = tracker.update(2, 0.5 + TrackConfig().max_age_s + 0.1, dets, 0.5)
    assert set(first.tolist()).isdisjoint(later.tolist())
    assert sorted(e.track_id for e in events if e.kind == "end") == sorted(first.tolist())


def test_a_frame_without_detections() -> None:
    tracker = StreamTracker(TrackConfig())
    ids, events = tracker.update(0, 0.0, _detections([], 240, 320), 0.5)
    assert ids.shape == (0,) and events == []


def test_the_similarity_of_masks_in_regions() -> None:
    """Regions are indexed [x, y] (column by column, as MaskRegions keeps them): an L-shaped mask tells
    x from y."""
    frame = np.zeros((6, 8), bool)  # rows (y), columns (x)
    frame[1:4, 2] = True
    frame[3, 2:5] = True  # an L: down column 2, then along row 3
    masks = MaskRegions.from_full(frame[None])
    x, y, w, h = masks.regions[0]
    assert (x, y, w, h) == (2, 1, 3, 3)
    bits = masks.bits.reshape(w, h)  # [x, y]
    assert overlap(x, y, bits, x, y, bits) == 5 and similarity(5, 5, 5) == 1.0
    row = np.zeros((3, 1), bool)
    row[:, 0] = True  # three columns of one row: x 2..4 at y 3, the L's foot
    assert overlap(x, y, bits, 2, 3, row) == 3 and similarity(3, 5, 3) == pytest.approx(3 / 5)
    assert overlap(x, y, bits, 2, 2, row) == 1  # y 2: only the L's upright
    assert overlap(x, y, bits, 10, 10, row) == 0 and similarity(0, 5, 3) == 0.0


def test_a_tracker_restored_from_its_state_goes_on_exactly_as_the_one_it_was_taken_from() -> None:
    """The state crosses JSON (the supervisor keeps it); the restored tracker and the first, fed the same
    frames after it, give the same ids and events."""
    scene = Scene(408, 640, 360, STYLES["crowded"])
    frames = []
    for _ in range(40):
        _, instances = scene.render()
        frames.append(_detections([i for i in instances if i.area >= 20], 360, 640))
        scene.step()
    first = StreamTracker(TrackConfig(), ordinal=1, streams=3)
    for frame, dets in enumerate(frames[:20]):
        first.update(frame, frame / FPS, dets, 0.5)
    restored = StreamTracker(TrackConfig(), ordinal=1, streams=3)
    restored.restore(json.loads(json.dumps(first.state())))
    for frame, dets in enumerate(frames[20:], start=20):
        ids, events = first.update(frame, frame / FPS, dets, 0.5)
        again, events_again = restored.update(frame, frame / FPS, dets, 0.5)
        assert again.tolist() == ids.tolist() and events_again == events
    assert json.dumps(first.state()) == json.dumps(restored.state())


def test_each_stream_numbers_its_tracks_in_a_series_of_its_own() -> None:
    """Stream k of n: k + 1, k + 1 + n, ...: ids never collide across streams, and need no coordination."""
    scene = Scene(409, 320, 240)
    _, instances = scene.render()
    dets = _detections([i for i in instances if i.area >= 20], 240, 320)
    ids = [StreamTracker(TrackConfig(), ordinal=k, streams=3).update(0, 0.0, dets, 0.5)[0].tolist() for k in range(3)]
    assert ids[0][:3] == [1, 4, 7] and ids[1][:3] == [2, 5, 8] and ids[2][:3] == [3, 6, 9]
    assert StreamTracker(TrackConfig()).update(0, 0.0, dets, 0.5)[0].tolist() == list(range(1, len(dets) + 1))


def test_an_object_the_model_gives_twice_as_two_classes_keeps_one_track_per_class() -> None:
    """Two near-equal masks of one shape, one a circle and one a rectangle (per-class NMS keeps both):
    each track stays with its own class, even when the other's mask fits it a little better."""
    frame = np.zeros((2, 100, 100), bool)
    frame[0, 20:60, 20:60] = frame[1, 20:60, 20:61] = True
    masks = MaskRegions.from_full(frame)
    boxes = np.array([[20, 20, 60, 60], [20, 20, 61, 60]], np.float32)
    tracker = StreamTracker(TrackConfig(motion=False))
    first, _ = tracker.update(0, 0.0, Detections(boxes, np.array([0.9, 0.8], np.float32), np.array([1, 2]), masks), 0.5)
    swapped = MaskRegions.from_full(frame[::-1].copy())  # the circle's mask is now the rectangle's of before
    then, _ = tracker.update(1, 0.04, Detections(boxes[::-1].copy(), np.array([0.9, 0.8], np.float32),
                                                 np.array([1, 2]), swapped), 0.5)
    assert then.tolist() == first.tolist()
