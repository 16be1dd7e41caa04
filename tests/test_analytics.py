"""Zones and lines (:mod:`streamseg.tracking.analytics`): the geometry, the counts against the ground
truth's own tracks, and bad ``analytics`` settings."""

from __future__ import annotations

import numpy as np
import pytest
from test_tracking import _detections

from streamseg.config import (
    AnalyticsConfig,
    LineConfig,
    TrackConfig,
    ZoneConfig,
    load_config,
)
from streamseg.errors import ConfigError
from streamseg.plan import build_specs
from streamseg.runtime.messages import Detections, MaskRegions
from streamseg.tools.synth import STYLES, Scene
from streamseg.tracking.analytics import StreamAnalytics, inside, segments_cross
from streamseg.tracking.tracker import StreamTracker

SQUARE = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float64)


def test_inside_a_polygon_edges_included() -> None:
    points = np.array([[5, 5], [0, 5], [10, 10], [10.5, 5], [-1, -1], [5, 10.01]])
    assert inside(SQUARE, points).tolist() == [True, True, True, False, False, False]
    notch = np.array([[0, 0], [10, 0], [10, 10], [5, 3], [0, 10]], np.float64)  # concave: a notch from the top
    assert inside(notch, np.array([[5, 2], [5, 6], [1, 8], [9, 8]])).tolist() == [True, False, True, True]


def test_segments_cross_only_through_both() -> None:
    a, b = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    assert segments_cross(np.array([5.0, -1]), np.array([5.0, 1]), a, b)
    assert not segments_cross(np.array([11.0, -1]), np.array([11.0, 1]), a, b)  # past the line's end
    assert not segments_cross(np.array([5.0, 0]), np.array([5.0, 1]), a, b)  # from a point on it: not yet across


def _one(x: float, y: float, track: int, label: int = 1) -> Detections:
    """One instance whose box's bottom centre is (x, y)."""
    mask = np.zeros((1, 100, 100), bool)
    mask[0, int(y) - 4:int(y), int(x) - 2:int(x) + 2] = True
    return Detections(np.array([[x - 2, y - 4, x + 2, y]], np.float32), np.array([0.9], np.float32),
                      np.array([label]), MaskRegions.from_full(mask), track_ids=np.array([track]))


def test_in_is_a_crossing_to_the_left_looking_along_the_line_and_dwell_is_first_to_last_inside() -> None:
    """A line from (0, 50) to (100, 50): looking along it, to the right on the picture, the left-hand
    side is up (y < 50). Going up across it is in; coming back down is out."""
    config = AnalyticsConfig(zones=(ZoneConfig("box", ((20, 10), (80, 10), (80, 40), (20, 40))),),
                             lines=(LineConfig("gate", ((0, 50), (100, 50))),))
    zones = StreamAnalytics(config, "0", 100, 100)
    path = [(50, 70), (50, 45), (50, 30), (50, 20), (50, 45), (50, 60)]
    for frame, (x, y) in enumerate(path):
        zones.update(_one(x, y, 7), frame / 25, ["circle"])
    report = zones.report(drain=True)
    assert report["lines"]["gate"] == {"in": 1, "out": 1, "in_by_class": {"circle": 1}, "out_by_class": {"circle": 1}}
    assert report["zones"]["box"]["entered"] == 1 and report["zones"]["box"]["occupancy"] == 0
    assert report["zones"]["box"]["dwell_s"] == {"count": 1, "mean": pytest.approx(0.04), "max": pytest.approx(0.04)}
    assert report["zones"]["box"]["left"] == [{"track_id": 7, "dwell_s": pytest.approx(0.04)}]
    assert zones.report()["zones"]["box"]["left"] == []  # each stay is reported once


def test_an_anchor_exactly_on_the_line_crosses_when_it_is_off_it_again() -> None:
    """Box bottoms are often whole pixels: a step onto the line and one off it are one crossing."""
    zones = StreamAnalytics(AnalyticsConfig(lines=(LineConfig("gate", ((0, 50), (100, 50))),)), "0", 100, 100)
    for frame, y in enumerate([70, 60, 50, 50, 40, 50, 60]):  # up across it (in), back onto it, down off it (out)
        zones.update(_one(50, y, 3), frame / 25, ["star"])
    assert zones.report()["lines"]["gate"]["in"] == 1 and zones.report()["lines"]["gate"]["out"] == 1
    zones.update(_one(150 - 60, 40, 4), 1.0, ["star"])
    zones.update(_one(150 - 60, 60, 4), 1.04, ["star"])  # x 90: under the segment, which ends at x 100
    zones.update(_one(105, 40, 5), 1.0, ["star"])
    zones.update(_one(105, 60, 5), 1.04, ["star"])  # x 105: past its end, not a crossing
    assert zones.report()["lines"]["gate"]["out"] == 2


def test_counts_from_the_tracker_equal_the_ground_truth_tracks_counts() -> None:
    """The ground truth's masks as detections: the tracker's ids give the zones and lines the same
    figures as the ground truth's own ids."""
    config = AnalyticsConfig(zones=(ZoneConfig("left", ((0, 0), (300, 0), (300, 360), (0, 360))),
                                    ZoneConfig("middle", ((200, 100), (440, 100), (440, 260), (200, 260)))),
                             lines=(LineConfig("across", ((320, 0), (320, 360))),
                                    LineConfig("along", ((0, 180), (640, 180)))))
    scene, tracker = Scene(408, 640, 360, STYLES["fast"]), StreamTracker(TrackConfig())
    ours, truth = StreamAnalytics(config, "0", 640, 360), StreamAnalytics(config, "0", 640, 360)
    for frame in range(150):
        _, instances = scene.render()
        shown = [i for i in instances if i.area >= 20]
        dets = _detections(shown, 360, 640)
        ids, events = tracker.update(frame, frame / 25, dets, 0.5)
        names = [str(i.label) for i in shown]
        ours.update(Detections(dets.boxes, dets.scores, dets.labels, dets.masks, track_ids=ids), frame / 25, names)
        ours.end([e.track_id for e in events if e.kind == "end"])
        truth.update(Detections(dets.boxes, dets.scores, dets.labels, dets.masks,
                                track_ids=np.array([i.track_id for i in shown], np.int64)), frame / 25, names)
        scene.step()
    mine, theirs = ours.report(), truth.report()
    assert sum(ln["in"] + ln["out"] for ln in theirs["lines"].values()) >= 5  # the scene crosses them
    assert mine["lines"] == theirs["lines"]
    assert [z["entered"] for z in mine["zones"].values()] == [z["entered"] for z in theirs["zones"].values()]


@pytest.mark.parametrize("analytics, needle", [
    ({"zones": [{"name": "bow", "points": [[0, 0], [10, 10], [10, 0], [0, 10]]}]},
     r"analytics.zones\[0\] \(bow\): the polygon crosses itself"),
    ({"zones": [{"name": "flat", "points": [[0, 0], [10, 0], [20, 0]]}]}, r"analytics.zones\[0\] \(flat\): .*no area"),
    ({"zones": [{"name": "two", "points": [[0, 0], [10, 0]]}]}, r"analytics.zones\[0\] \(two\): .*at least 3"),
    ({"lines": [{"name": "dot", "points": [[5, 5], [5, 5]]}]},
     r"analytics.lines\[0\] \(dot\): the line has zero length"),
    ({"lines": [{"points": [[0, 5], [5, 5]]}]}, r"analytics.lines\[0\] needs a name"),
    ({"lines": [{"name": "a", "points": [[0, 5], [5, 5]]}, {"name": "a", "points": [[0, 6], [5, 6]]}]},
     r"analytics.lines\[1\]: the name 'a' is used twice for one stream"),
    ({"zones": [{"name": "z", "points": [[0, 0], [1, 0], [1, 1]], "colour": "red"}]}, "unknown config key"),
    ({"zones": [{"name": "z", "points": [[0, 0], [10, 0], [10]]}]}, r"analytics.zones\[0\].points\[2\] \(z\): a point"),
    ({"lines": [{"name": "a", "points": [[0, 5], [5, 5]], "stream": "cam9"}]}, r"no stream 'cam9' in this run"),
    ({"lines": [{"name": "a", "points": [[0, 5], [5, 5]]}, {"name": "a", "points": [[0, 6], [5, 6]], "stream": "0"}]},
     r"analytics.lines\[1\]: the name 'a' is used twice for one stream"),
])
def test_bad_analytics_settings_are_one_clear_error_naming_the_key(tmp_path, analytics: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config = load_config(overrides=[{"input": {"path": "in.mp4"}, "output": {"masks": "m.jsonl"},
                                         "analytics": analytics}])
        build_specs(config, str(tmp_path))


def test_a_zone_outside_the_frame_is_said_when_the_stream_s_size_is_known() -> None:
    config = AnalyticsConfig(zones=(ZoneConfig("far", ((0, 0), (700, 0), (700, 100))),))
    with pytest.raises(ConfigError, match=r"analytics.zones\[0\] \(far\) reaches outside stream 0's 640x360 frame"):
        StreamAnalytics(config, "0", 640, 360)
    StreamAnalytics(config, "0", 1280, 720)  # fits a larger stream
