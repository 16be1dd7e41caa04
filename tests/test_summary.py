"""The run summary (:mod:`streamseg.summary`) from made-up worker stats: what it counts and what it prints."""

from __future__ import annotations

from typing import Any

from streamseg.config import load_config
from streamseg.summary import Progress, Summary, summarise

TIMES = {"start": 100.0, "ready": 102.0, "end": 110.0}


def _config(**sections: dict[str, Any]) -> Any:
    return load_config(overrides=[{"input": {"path": "in.mp4"}, "output": {"video": "out.mp4", "masks": "m.jsonl"},
                                   **sections}])


def _stage(busy: float, **counters: Any) -> dict[str, Any]:
    return {"busy_s": busy, "blocked_s": 0.5, "cpu_s": busy, "counters": counters}


def test_a_file_run() -> None:
    stats = {"decode": _stage(1.0, frames=48, skipped=0), "batch": _stage(0.1, batches=12),
             "infer": {**_stage(6.0, batches=12, frames=48), "restarts": []},
             "render": _stage(0.5, frames=48), "encode": {**_stage(0.7, frames=48), "latency": {"frames": 48,
                                                                                               "p50_s": 0.12,
                                                                                               "p99_s": 0.3,
                                                                                               "max_s": 0.4}},
             "masks": _stage(0.2, frames=48)}
    summary = summarise(_config(), stats, "encode", TIMES, ["decode: in.mp4: 2 corrupt packets or frames skipped"])
    assert (summary.frames, summary.wall_s, summary.startup_s) == (48, 10.0, 2.0)
    assert summary.fps == 6.0 and summary.fps_end_to_end == 4.8
    assert summary.bottleneck() == "infer" and summary.latency_at == "encode" and summary.latency["p99_s"] == 0.3
    assert summary.outputs == {"video": "out.mp4", "masks": "m.jsonl"}
    assert not (summary.truncated or summary.interrupted or summary.lost or summary.restarts or summary.dropped)
    table = summary.table().splitlines()
    assert table[0].startswith("frames 48 in 10.00 s end to end (4.80 fps); start-up 2.00 s, then 6.00 fps")
    assert [line.split()[0] for line in table[2:8]] == ["decode", "batch", "infer", "render", "encode", "masks"]
    assert "batches=12 frames=48" in table[4]
    assert table[8:] == ["bottleneck: infer", "latency capture to encode: p50 120 ms  p99 300 ms  max 400 ms",
                         "warning: decode: in.mp4: 2 corrupt packets or frames skipped"]


def test_several_sinks_drops_losses_restarts_and_resends_add_up() -> None:
    config = _config(input={"sources": ["rtsp://a/s", "rtsp://b/s"], "stream_ids": ["door", "yard"]},
                     output={"masks": "m-{stream}.jsonl", "publish": "tcp://127.0.0.1:5556"})
    stats = {"decode-door": _stage(1.0, frames=100, dropped=2, skipped=1, truncated=1),
             "decode-yard": _stage(1.0, frames=90, dropped=1, gave_up=1, lost=1),
             "batch": {**_stage(0.2, dropped=40), "dropped_by_stream": {"door": 25, "yard": 15}},
             "infer": {**_stage(8.0, frames=147, resent=3), "restarts": ["worker process died (SIGKILL)"] * 2},
             "masks": _stage(0.3, frames=147),
             "publish": {**_stage(0.4, frames=147, resent=0), "latency": {"frames": 147, "p50_s": 0.1,
                                                                            "p99_s": 0.2, "max_s": 0.3}}}
    summary = summarise(config, stats, "masks", {**TIMES, "interrupted": 109.0}, [])
    assert summary.frames == 147 and summary.dropped == 43 and summary.skipped == 1
    assert summary.truncated and summary.interrupted and summary.lost == ["yard"]
    assert summary.restarts == {"infer": ["worker process died (SIGKILL)"] * 2} and summary.resent == 3
    assert summary.latency_at == "publish"  # publishing is the last hop when there is one
    assert summary.outputs == {"masks": "m-door.jsonl, m-yard.jsonl", "published": "tcp://127.0.0.1:5556"}
    table = summary.table()
    assert "dropped 43 live frames before inference (inference was behind) (door: 25, yard: 15)" in table
    assert "restarted infer 2x: worker process died (SIGKILL); worker process died (SIGKILL)" in table
    assert "resent 3 messages that replaced workers had not finished" in table
    assert "latency capture to publish: p50 100 ms" in table


def test_parallel_workers_of_the_progress_stage_add_up() -> None:
    config = _config(input={"sources": ["a.mp4", "b.mp4"]}, encode={"workers": 2}, render={"workers": 2})
    stats = {"decode-0": _stage(1, frames=40), "decode-1": _stage(1, frames=30), "render-0": _stage(1, frames=35),
             "render-1": _stage(1, frames=35), "encode-0": _stage(1, frames=40), "encode-1": _stage(1, frames=30),
             "masks": _stage(1, frames=70)}
    summary = summarise(config, stats, "encode", TIMES, [])
    assert summary.frames == 70 and summary.latency_at == "encode-0" and summary.latency == {}
    assert summary.outputs["video"] == "out-0.mp4, out-1.mp4"
    rows = [line.split()[0] for line in summary.table().splitlines()[2:9]]
    assert rows == ["decode-0", "decode-1", "render-0", "render-1", "encode-0", "encode-1", "masks"]


def test_the_empty_cases() -> None:
    # nothing ran (a run stopped before any worker was ready): no stats, no frames, no division by zero
    summary = summarise(_config(), {}, "encode", {"start": 100.0, "end": 100.0}, [])
    assert (summary.frames, summary.startup_s, summary.fps_end_to_end, summary.bottleneck()) == (0, 0.0, 0.0, "")
    assert summary.fps == 0.0 and summary.latency == {} and summary.latency_at == "encode"
    assert summary.table().splitlines()[-1] == "bottleneck: "
    empty = Summary(0, 0.0, 0.0, 0.0, {})
    assert empty.table().startswith("frames 0 in 0.00 s end to end (0.00 fps)")


def test_progress_is_silent_off_a_terminal() -> None:
    progress = Progress(enabled=False)
    progress({"event": "stream", "frames": 10})
    progress({"event": "progress", "stage": "encode", "frames": 5})
    assert progress.bar is None and progress.done == {}
    progress.close()


# The three tests below carry the names of tests another engineer had in this file, which was
# overwritten by mistake; they are rewritten here from those names and the code they test.

def test_times_count_from_the_command_and_rates_say_what_they_include() -> None:
    stats = {"decode": _stage(1, frames=60), "encode": _stage(2, frames=60)}
    summary = summarise(_config(), stats, "encode", {"start": 10.0, "ready": 14.0, "end": 20.0}, [])
    assert summary.wall_s == 10.0  # from the command's start, start-up included
    assert summary.startup_s == 4.0
    assert summary.fps == 10.0  # after start-up: 60 frames in 6 s
    assert summary.fps_end_to_end == 6.0  # 60 frames in the whole 10 s
    first = summary.table().splitlines()[0]
    assert first == "frames 60 in 10.00 s end to end (6.00 fps); start-up 4.00 s, then 10.00 fps"


def test_a_run_that_never_got_ready_counts_all_of_it_as_start_up() -> None:
    summary = summarise(_config(), {"decode": _stage(0.1, frames=0)}, "encode", {"start": 10.0, "end": 13.0}, [])
    assert summary.startup_s == summary.wall_s == 3.0
    assert summary.frames == 0 and summary.fps == 0.0 and summary.fps_end_to_end == 0.0


def test_process_start_is_before_now_and_after_the_process_began() -> None:
    import subprocess
    import sys
    import time

    from streamseg.clock import process_started

    before = time.monotonic()
    started = process_started()
    assert started <= time.monotonic() and started <= before
    # a fresh interpreter that sleeps before asking: its start is that long (and its start-up) before
    code = ("import time; time.sleep(0.5); from streamseg.clock import process_started; "
            "print(time.monotonic() - process_started())")
    launched = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    age = float(out.stdout)
    assert 0.5 <= age <= time.monotonic() - launched + 0.05  # clock ticks: 10 ms


def test_an_output_written_on_another_host_says_so() -> None:
    config = _config(transport={"endpoints": "tcp", "remote": ["masks"]})
    summary = summarise(config, {"masks": _stage(0.2, frames=3)}, "masks", TIMES, [])
    assert summary.outputs == {"video": "out.mp4", "masks": "m.jsonl (on the host of its streamseg worker)"}
