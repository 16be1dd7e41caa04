"""The track stage as an object (no processes): what it sends on, its checkpoints, and a replacement
that takes one back. The real kill: tests/test_reliability.py."""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction

import numpy as np
import pytest
from test_tracking import _detections

from streamseg.config import AnalyticsConfig, LineConfig, TrackConfig, ZoneConfig
from streamseg.models import model_info
from streamseg.runtime.messages import (
    EndOfStream,
    FrameResult,
    StreamStart,
    StreamStatus,
)
from streamseg.stages.track import TrackStage
from streamseg.tools.synth import STYLES, Scene

PORTS = ("render", "masks")


def _results(seed: int, frames: int, stream: str = "0", width: int = 320, height: int = 240) -> list[FrameResult]:
    """A scene's ground truth as the model's results: every shape at 0.9, and a low-score one (0.3) of
    the first shape's mask in every frame, which the tracker may match but never writes out."""
    scene, results = Scene(seed, width, height, STYLES["crowded"]), []
    for index in range(frames):
        _, instances = scene.render()
        shown = [i for i in instances if i.area >= 20]
        shown += shown[:1]
        dets = _detections(shown, height, width, [0.9] * (len(shown) - 1) + [0.3] if shown else [])
        image = np.zeros((height, width, 3), np.uint8)
        results.append(FrameResult(stream, index, index * 1000, Fraction(1, 25000), width, height, dets, image))
        scene.step()
    return results


def _start(stream: str = "0") -> StreamStart:
    return StreamStart(stream, 320, 240, Fraction(25), Fraction(1, 25000), 0, "clip.mp4", False)


def _stage(checkpoints: list, analytics: AnalyticsConfig | None = None, tracked: tuple[str, ...] = ("0",),
           previous: dict | None = None) -> TrackStage:
    """A track stage as its worker makes it (``previous``: a replacement, given the last checkpoint)."""
    stage = TrackStage(TrackConfig(), ["0", "1"], list(tracked), 0.5, model_info("streamseg-small").to_dict(), PORTS,
                       dataclasses.asdict(analytics) if analytics else None)
    stage.bind_events(lambda event, **data: checkpoints.append(json.loads(json.dumps(data))))
    stage.restarted, stage.previous = previous is not None, previous or {}
    stage.setup()
    return stage


def test_results_go_on_with_track_ids_and_without_the_low_scores() -> None:
    stage = _stage([])
    stage.process(_start())
    first = _results(408, 1)[0]
    out = list(stage.process(first))
    assert [port for port, _ in out] == list(PORTS)
    render, masks = out[0][1], out[1][1]
    n = len(first.detections) - 1  # all but the low-score one
    assert render.image is first.image and masks.image is None
    assert len(masks.detections) == n and masks.detections.track_ids.tolist() == list(range(1, 2 * n, 2))
    assert (masks.detections.masks.full() == first.detections.masks.full()[:n]).all()
    assert [e.kind for e in masks.events] == ["start"] * n and [e.track_id for e in masks.events] == \
        masks.detections.track_ids.tolist()


def test_a_stream_not_tracked_goes_on_without_ids_and_without_the_low_scores() -> None:
    stage = _stage([])
    result = _results(408, 1, stream="1")[0]
    (_, out), _ = stage.process(result)
    assert out.detections.track_ids is None and (out.detections.scores >= 0.5).all()
    assert len(out.detections) == len(result.detections) - 1 and out.events == ()


def test_a_loop_restart_ends_every_track_and_starts_new_ones() -> None:
    stage = _stage([])
    first, second = _results(408, 2)
    before = list(stage.process(first))[1][1]
    after = list(stage.process(dataclasses.replace(second, loop=1)))[1][1]
    assert set(before.detections.track_ids.tolist()).isdisjoint(after.detections.track_ids.tolist())
    assert sorted(e.track_id for e in after.events if e.kind == "end") == sorted(before.detections.track_ids.tolist())


ZONES = AnalyticsConfig(zones=(ZoneConfig("left", ((0, 0), (160, 0), (160, 240), (0, 240))),),
                        lines=(LineConfig("middle", ((0, 120), (320, 120))),))


@pytest.mark.parametrize("killed_after", [27, 40, 59])
def test_a_replacement_sends_what_an_undisturbed_tracker_would(killed_after: int) -> None:
    """Two tracked streams, their frames interleaved; the first tracker is lost after message
    ``killed_after``. What it held since its last checkpoint comes again (and, before that, what
    downstream had not finished: here each stream's last 3 frames; and one that downstream had), and
    the replacement's outputs from there on are those of a tracker that never failed: ids, events,
    the zones' and lines' counts, and at each stream's end (stream 1's comes first) the same ends."""
    results = [r for pair in zip(_results(408, 40), _results(409, 40, stream="1")) for r in pair]
    undisturbed = _stage([], ZONES, ("0", "1"))
    expected = {(r.stream_id, r.index): list(undisturbed.process(r))[1][1] for r in results}
    checkpoints: list = []
    first = _stage(checkpoints, ZONES, ("0", "1"))
    done = results[:killed_after + 1]
    for result in done:
        for port, out in first.process(result):
            if out.index < done[-1].index - 2:
                first.acknowledged(port, out, True)
    assert checkpoints and set(checkpoints[-1]["streams"]) == {"0", "1"}
    held = first.holds()
    assert held and all(i >= max(checkpoints[-1]["streams"][sid]["tracker"]["frame"] for sid in "01") - 1
                        for _, i in held)
    replacement = _stage([], ZONES, ("0", "1"), previous={**checkpoints[-1], "cause": "SIGKILL"})
    assert list(replacement.process(results[0])) == []  # finished downstream before the loss: nothing again
    again = [r for r in done if (r.stream_id, r.index) in held or r.index >= done[-1].index - 2]
    for result in again + results[killed_after + 1:]:
        for port, out in replacement.process(result):
            want = expected[(out.stream_id, out.index)]
            assert out.detections.track_ids.tolist() == want.detections.track_ids.tolist(), out.index
            assert out.events == want.events and out.counts == want.counts and out.report == want.report
    assert sum(c.entered + c.out for c in expected[("0", 39)].counts) > 0 and expected[("0", 0)].report  # counted
    for sid in ("1", "0"):
        eos = EndOfStream(sid, 40)
        ended, again_ended = undisturbed.passes_on(eos), replacement.passes_on(eos)
        assert again_ended.events == ended.events != () and again_ended.report == ended.report != ""
    assert replacement.report()["analytics"] == undisturbed.report()["analytics"]
    assert replacement.counters["frames"] == undisturbed.counters["frames"] == 80


def test_a_replacement_whose_first_message_is_a_stream_s_end_ends_its_tracks() -> None:
    """The first tracker passed the end on and was lost before downstream was done with it: the end
    comes again, and the replacement sends the same ends of tracks (from the checkpoint at the end)."""
    checkpoints: list = []
    first = _stage(checkpoints)
    for result in _results(408, 12):
        first.process(result)
    ended = first.passes_on(EndOfStream("0", 12)).events
    replacement = _stage([], previous={**checkpoints[-1], "cause": "SIGKILL"})
    assert replacement.passes_on(EndOfStream("0", 12)).events == ended and len(ended) >= 5


@pytest.mark.parametrize("away_s, same", [(0.5, True), (1.5, False)])
def test_a_live_source_s_tracks_survive_a_reconnection_shorter_than_max_age(away_s: float, same: bool) -> None:
    """A live stream is tracked on its capture clock: the same objects, after the source was away for
    less than track.max_age_s (1 s), keep their ids; after longer, they are new tracks."""
    stage = _stage([])
    stage.process(dataclasses.replace(_start(), live=True))
    before, after = (dataclasses.replace(r, captured=1000.0 + r.index / 25) for r in _results(408, 2))
    first = list(stage.process(before))[1][1]
    stage.process(StreamStatus("0", "lost", "gone"))
    stage.process(StreamStatus("0", "reconnected", "", 1))
    again = list(stage.process(dataclasses.replace(after, captured=before.captured + away_s)))[1][1]
    shared = set(first.detections.track_ids.tolist()) & set(again.detections.track_ids.tolist())
    assert bool(shared) == same and (not same or len(shared) == len(first.detections))


def test_a_service_stream_s_own_zones_count_as_a_run_s_and_a_replacement_takes_them_back() -> None:
    """In a service the zones and lines come with the stream (its StreamStart): it is counted as a run
    whose config has them; a replacement takes them back from the checkpoint, before the StreamStart
    comes again, and counts on as if nothing had happened."""
    results = _results(408, 40)
    run = TrackStage(TrackConfig(), ["0"], ["0"], 0.5, model_info("streamseg-small").to_dict(), PORTS,
                     dataclasses.asdict(ZONES))  # one stream: its ids are 1, 2, 3... as a service's
    run.setup()
    expected = [list(run.process(r))[1][1] for r in results]
    checkpoints: list = []

    def service(previous: dict | None = None) -> TrackStage:
        stage = TrackStage(TrackConfig(), [], None, 0.5, model_info("streamseg-small").to_dict(), PORTS)
        stage.bind_events(lambda event, **data: checkpoints.append(json.loads(json.dumps(data))))
        stage.restarted, stage.previous = previous is not None, previous or {}
        stage.setup()
        return stage

    start = dataclasses.replace(_start(), analytics=json.dumps(dataclasses.asdict(ZONES)))
    first = service()
    first.process(start)
    for result, want in zip(results[:25], expected):
        for port, out in first.process(result):
            assert out.counts == want.counts and out.report == want.report
            first.acknowledged(port, out, True)
    replacement = service({**checkpoints[-1], "cause": "SIGKILL"})  # after frame 19: 20 to 24 come again
    assert list(replacement.process(start))
    for result, want in zip(results[20:], expected[20:]):
        out = list(replacement.process(result))[1][1]
        assert out.counts == want.counts and out.report == want.report, result.index
    assert sum(c.entered + c.out for c in expected[-1].counts) > 0  # something was counted
    ended = replacement.passes_on(EndOfStream("0", 40))
    assert ended.report == run.passes_on(EndOfStream("0", 40)).report != ""
    assert replacement.areas == {}  # the stream's zones go with it


def test_a_service_stream_added_again_under_its_id_has_only_its_own_zones() -> None:
    """Its first coming ended before any frame reached the tracker (removed at once): the zones it had
    do not stay for the next stream of that id, which has none (nor a frame size they must fit)."""
    stage = TrackStage(TrackConfig(), [], None, 0.5, model_info("streamseg-small").to_dict(), PORTS)
    stage.setup()
    stage.process(dataclasses.replace(_start(), analytics=json.dumps(dataclasses.asdict(ZONES))))
    assert stage.passes_on(EndOfStream("0", 0)).frames == 0
    assert stage.areas == {}
    stage.process(_start())
    small = _results(408, 1, width=100, height=80)[0]  # the zones would reach outside this frame
    out = list(stage.process(small))[1][1]
    assert out.counts == () and stage.streams["0"].analytics is None
