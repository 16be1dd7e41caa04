"""Timestamps of decoded frames: FFmpeg's best-effort rule, and the repair of those that do not move forward."""

from __future__ import annotations

import pytest

from streamseg.stages.timing import BestEffort, Timeline


def test_best_effort_takes_pts_until_they_go_wrong_more_often_than_dts() -> None:
    # pts and dts as PyAV gives them for an MP4 whose encoder wrote some pts twice (the corpus'
    # pts_repeated.mp4); the answers are ffprobe's best_effort_timestamp for the same frames
    frames = [(0, 9001), (9001, 9002), (9002, 18000), (9000, 18001), (18001, 18002), (18002, 27000),
              (18000, 27001), (27001, 27002)]
    guess = BestEffort()
    assert [guess(pts, dts) for pts, dts in frames] == [0, 9001, 9002, 18001, 18002, 27000, 27001, 27002]
    assert guess.departed  # timestamps that hang on what came before: a seek would give other ones


def test_best_effort_falls_back_to_whichever_timestamp_there_is() -> None:
    guess = BestEffort()
    assert [guess(None, 5), guess(6, None), guess(None, None)] == [5, 6, None]
    clean = BestEffort()
    assert [clean(t, t - 2) for t in (10, 20, 30)] == [10, 20, 30]
    assert not clean.departed and not guess.departed  # AVI's missing pts take the dts after a seek too


def test_timeline_keeps_forward_timestamps_and_repairs_the_rest_from_the_frame_rate() -> None:
    timeline = Timeline(step=40)
    # a pause (gap) stays; repeats and steps back become the previous one plus a frame
    got = [timeline(t) for t in (1000, 1040, 3000, 3000, 2960, 3120, None)]
    assert got == [1000, 1040, 3000, 3040, 3080, 3120, 3160] and timeline.repaired == 3
    assert (timeline.first, timeline.shortest, timeline.longest, timeline.variable) == (1000, 40, 1960, True)
    first = Timeline(step=1)
    assert first(None) == 0 and first.repaired == 1


def test_the_capture_clock_starts_again_with_each_session() -> None:
    from streamseg.stages.timing import CaptureClock

    clock = CaptureClock()
    assert clock(10.0, 1000.0) == 1000.0  # the first frame: captured as it arrived
    assert clock(10.5, 1000.9) == 1000.5  # late by 0.4 s: a backlog counts as latency
    assert clock(11.0, 1000.8) == 1000.8  # earlier than the clock said: the clock moves back
    clock.new_session()  # the source was away 20 s, and its timestamps say so: not 20 s of latency
    assert clock(31.0, 1021.2) == 1021.2


def test_a_pacer_lets_each_frame_out_when_its_time_has_come() -> None:
    from streamseg.stages.timing import Pacer

    pacer = Pacer()
    assert pacer.wait_s(5.0, 100.0) == 0.0
    assert pacer.wait_s(5.04, 100.0) == pytest.approx(0.04)
    assert pacer.wait_s(6.0, 100.5) == pytest.approx(0.5)
    assert pacer.wait_s(6.0, 102.0) == 0.0  # behind: at once
