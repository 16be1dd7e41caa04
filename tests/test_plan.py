"""Planning a run (:mod:`streamseg.plan`): which workers, which config section each takes, how they
are joined (ipc and tcp endpoints, stages on other hosts), and the specs' JSON form
(:mod:`streamseg.runtime.spec`). Nothing is started here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from streamseg.config import (
    BatchConfig,
    Config,
    EncodeConfig,
    InputConfig,
    ModelConfig,
    RenderConfig,
    load_config,
)
from streamseg.errors import ConfigError
from streamseg.models import model_info
from streamseg.pipeline import check
from streamseg.plan import (
    Plan,
    build_specs,
    source_stage_names,
    stream_output,
    stream_outputs,
    worker_names,
)
from streamseg.runtime.spec import WorkerSpec, spec_from_json, spec_to_json
from streamseg.stages import STAGES


def _config(**sections: dict[str, Any]) -> Config:
    """A checked config: ``input`` and ``output`` default to one file in, video + masks out."""
    layer = {"input": {"path": "in.mp4"}, "output": {"video": "out.mp4", "masks": "m.jsonl"}, **sections}
    return load_config(overrides=[layer])


def _plan(tmp_path: Path, **sections: dict[str, Any]) -> Plan:
    return build_specs(_config(**sections), str(tmp_path))


def _by_name(plan: Plan) -> dict[str, WorkerSpec]:
    return {spec.name: spec for spec in plan.specs}


def _links(plan: Plan) -> list[tuple[str, str, str]]:
    """(sender, its port, receiver) for every link, found by matching endpoints (ipc: identical)."""
    out = []
    for sender in plan.specs:
        for port, endpoint in sender.outputs.items():
            receivers = [r.name for r in plan.specs if endpoint in r.inputs]
            assert receivers, f"nobody reads {sender.name}'s {port} at {endpoint}"
            out += [(sender.name, port, r) for r in receivers]
    return out


def test_one_source_to_every_output(tmp_path: Path) -> None:
    plan = _plan(tmp_path, output={"video": "out.mp4", "masks": "m.jsonl", "publish": "tcp://127.0.0.1:5556"})
    specs = _by_name(plan)
    assert list(specs) == ["decode", "batch", "infer", "track", "render", "encode", "masks", "publish"]
    assert [s.stage for s in plan.specs] == list(specs)
    assert sorted(_links(plan)) == sorted([
        ("decode", "frames", "batch"), ("batch", "batches", "infer"), ("infer", "track", "track"),
        ("track", "render", "render"), ("track", "masks", "masks"), ("track", "publish", "publish"),
        ("render", "frames", "encode")])
    # with tracking (a video file: on by default) the model keeps detections down to track.low_score
    assert specs["infer"].params == {"ports": ["track"], "image_ports": ["track"], "keep_from": 0.1}
    assert specs["track"].params == {"streams": ["0"], "tracked": ["0"], "high_score": 0.5, "ports": ["render", "masks",
                                     "publish"], "model_info": model_info("streamseg-small").to_dict()}
    assert specs["decode"].params == {"source": "in.mp4", "stream_id": "0", "live": False, "drop_when_full": True}
    assert specs["decode"].inputs == () and specs["encode"].outputs == {} and specs["masks"].outputs == {}
    assert specs["encode"].params == {"paths": {"0": "out.mp4"}}
    assert specs["masks"].params == {"path": "", "paths": {"0": "m.jsonl"}, "model_info": model_info("streamseg-small").to_dict()}
    assert specs["publish"].publish == {"publish": "tcp://127.0.0.1:5556"} and specs["publish"].publish_curve is None
    # the last sink reports progress; the model runs at normal priority, with sleeping OpenMP threads
    assert plan.progress_stage == "encode" and [s.name for s in plan.specs if s.progress] == ["encode"]
    assert {s.name: s.nice for s in plan.specs if s.nice != 19} == {"infer": 0}
    assert specs["infer"].env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert specs["infer"].hwm_frames == 1  # batches: 4 frames of credit over batches of 4
    assert all(s.hwm_frames == 4 for s in plan.specs if s.name != "infer")
    assert all(s.streams == 1 and s.events == plan.events for s in plan.specs)
    assert plan.events == f"ipc://{tmp_path}/events" and plan.remote is None
    assert not any(s.parallel or s.ordered or s.curve for s in plan.specs)


def test_each_spec_carries_its_config_section(tmp_path: Path) -> None:
    config = _config(input={"path": "in.mp4", "fps": 12.0}, batch={"max_batch": 2}, model={"score_thresh": 0.25},
                     render={"boxes": False}, encode={"crf": 30})
    plan = build_specs(config, str(tmp_path))
    sections = {spec.stage: spec.config for spec in plan.specs}
    expected = {"decode": (InputConfig, config.input), "batch": (BatchConfig, config.batch),
                "infer": (ModelConfig, config.model), "render": (RenderConfig, config.render),
                "encode": (EncodeConfig, config.encode)}
    for stage, (cls, section) in expected.items():
        assert type(sections[stage]) is cls and sections[stage] == section, stage
        assert STAGES[stage].section is not None
    assert sections["masks"] is None and STAGES["masks"].section is None
    assert sections["batch"].max_batch == 2 and sections["infer"].score_thresh == 0.25
    assert plan.specs[2].hwm_frames == 2  # infer: ceil(4 frames / batches of 2)


def test_several_sources_get_a_decoder_each_and_share_the_rest(tmp_path: Path) -> None:
    plan = _plan(tmp_path, input={"sources": ["a.mp4", "rtsp://cam/s"], "stream_ids": ["door", "yard"]},
                 output={"video": "rec.mp4", "masks": "m-{stream}.jsonl"})
    specs = _by_name(plan)
    assert list(specs) == ["decode-door", "decode-yard", "batch", "infer", "track", "render", "encode", "masks"]
    assert specs["track"].params["streams"] == specs["track"].params["tracked"] == ["door", "yard"]
    assert (specs["decode-door"].params["source"], specs["decode-door"].params["stream_id"]) == ("a.mp4", "door")
    assert specs["decode-door"].params["live"] is False and specs["decode-yard"].params["live"] is True
    assert specs["batch"].inputs == (specs["decode-door"].outputs["frames"], specs["decode-yard"].outputs["frames"])
    assert specs["decode-door"].streams == 1 and all(specs[n].streams == 2 for n in ("batch", "infer", "masks"))
    assert specs["encode"].params == {"paths": {"door": "rec-door.mp4", "yard": "rec-yard.mp4"}}
    assert specs["masks"].params["paths"] == {"door": "m-door.jsonl", "yard": "m-yard.jsonl"}
    assert specs["infer"].hwm_frames == 1  # a live source: one batch waits at the model, the batcher holds the rest
    assert source_stage_names(_config(input={"sources": ["a.mp4", "b.mp4"]})) == ["decode-0", "decode-1"]
    assert source_stage_names(_config()) == ["decode"]


def test_block_policy_keeps_every_live_frame(tmp_path: Path) -> None:
    plan = _plan(tmp_path, input={"path": "rtsp://cam/s"}, batch={"live_policy": "block"})
    assert _by_name(plan)["decode"].params["drop_when_full"] is False


@pytest.mark.parametrize("output, names, progress", [
    ({"masks": "m.jsonl"}, ["decode", "batch", "infer", "track", "masks"], "masks"),
    ({"publish": "tcp://127.0.0.1:5556"}, ["decode", "batch", "infer", "track", "publish"], "publish"),
    ({"masks": "m.jsonl", "publish": "tcp://127.0.0.1:5556"}, ["decode", "batch", "infer", "track", "masks", "publish"],
     "masks"),
])
def test_runs_without_video_have_no_render_or_encode_workers(tmp_path: Path, output: dict[str, str],
                                                             names: list[str], progress: str) -> None:
    plan = _plan(tmp_path, output=output)
    assert [s.name for s in plan.specs] == names
    assert plan.progress_stage == progress and [s.name for s in plan.specs if s.progress] == [progress]
    assert _by_name(plan)["track"].params["ports"] == [p for p in ("masks", "publish") if p in names]
    assert _by_name(plan)["track"].outputs.keys() == set(_by_name(plan)["track"].params["ports"])
    assert _by_name(plan)["infer"].params["image_ports"] == []  # nothing draws: no pixels go past the model


def test_nothing_to_write_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to write"):
        _plan(tmp_path, output={"video": None, "masks": None})


def test_no_input_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no input"):
        check(load_config(overrides=[{"output": {"masks": "m.jsonl"}}]))


def test_several_render_workers_feed_one_encoder_in_order(tmp_path: Path) -> None:
    plan = _plan(tmp_path, render={"workers": 2})
    specs = _by_name(plan)
    assert list(specs) == ["decode", "batch", "infer", "track", "render-0", "render-1", "encode", "masks"]
    for name in ("render-0", "render-1"):
        assert specs[name].parallel and specs[name].inputs == specs["render-0"].inputs  # one port, both read it
        assert specs[name].params["routes"] == {} and list(specs[name].outputs) == ["frames"]
    assert specs["encode"].ordered and not specs["encode"].parallel
    assert specs["encode"].inputs == (specs["render-0"].outputs["frames"], specs["render-1"].outputs["frames"])
    assert worker_names("render", 1) == ["render"] and worker_names("render", 3) == ["render-0", "render-1", "render-2"]


def test_several_encoders_each_write_some_streams_and_renderers_route_to_them(tmp_path: Path) -> None:
    plan = _plan(tmp_path, input={"sources": ["a.mp4", "b.mp4", "c.mp4"], "stream_ids": ["x", "y", "z"]},
                 output={"video": "o.mp4"}, render={"workers": 3}, encode={"workers": 2})
    specs = _by_name(plan)
    renderers, encoders = ["render-0", "render-1", "render-2"], ["encode-0", "encode-1"]
    assert [n for n in specs if n.startswith(("render", "encode"))] == renderers + encoders
    assert specs["encode-0"].params == {"paths": {"x": "o-x.mp4", "z": "o-z.mp4"}}
    assert specs["encode-1"].params == {"paths": {"y": "o-y.mp4"}}
    assert (specs["encode-0"].streams, specs["encode-1"].streams) == (2, 1)
    for r in renderers:
        assert specs[r].params["routes"] == {"x": "frames-0", "y": "frames-1", "z": "frames-0"}
        assert list(specs[r].outputs) == ["frames-0", "frames-1"]
    for j, e in enumerate(encoders):
        assert specs[e].ordered
        assert specs[e].inputs == tuple(specs[r].outputs[f"frames-{j}"] for r in renderers)
    assert plan.progress_stage == "encode" and [s.name for s in plan.specs if s.progress] == encoders
    # more encoders than streams: one per stream
    one = _by_name(_plan(tmp_path, encode={"workers": 4}))
    assert "encode" in one and not any(n.startswith("encode-") for n in one)


def test_ipc_endpoints_lie_in_the_run_folder_and_each_link_has_its_own(tmp_path: Path) -> None:
    plan = _plan(tmp_path, output={"video": "o.mp4", "masks": "m.jsonl", "publish": "tcp://127.0.0.1:1"},
                 render={"workers": 2})
    endpoints = [e for s in plan.specs for e in s.outputs.values()]
    assert len(set(endpoints)) == len(endpoints)
    assert all(e.startswith(f"ipc://{tmp_path}/") for e in endpoints)
    assert {e for s in plan.specs for e in s.inputs} == set(endpoints)  # every input is someone's output


def test_tcp_endpoints_from_base_port(tmp_path: Path) -> None:
    plan = _plan(tmp_path, transport={"endpoints": "tcp", "base_port": 6000})
    specs = _by_name(plan)
    # sender binds, receiver connects; consecutive ports in the order the links were made
    assert specs["decode"].outputs == {"frames": "@tcp://127.0.0.1:6000"}
    assert specs["batch"].inputs == (">tcp://127.0.0.1:6000",)
    assert specs["batch"].outputs == {"batches": "@tcp://127.0.0.1:6001"}
    ports = sorted(int(e.rsplit(":", 1)[1]) for s in plan.specs for e in s.outputs.values())
    assert ports == list(range(6000, 6000 + len(ports)))
    assert plan.remote is None and plan.events.startswith("ipc://")  # local workers report over ipc
    free = _by_name(_plan(tmp_path, transport={"endpoints": "tcp"}))  # base_port 0: free ports now
    assert free["batch"].inputs[0].startswith(">tcp://127.0.0.1:") and free["batch"].inputs[0] != ">tcp://127.0.0.1:0"


def test_a_remote_stage_connects_to_the_advertised_host_and_everything_else_binds(tmp_path: Path) -> None:
    plan = _plan(tmp_path, transport={"endpoints": "tcp", "base_port": 6000, "bind_host": "0.0.0.0",
                                      "advertise_host": "box-a", "remote": ["infer"], "join_port": 7000})
    specs = _by_name(plan)
    # the events endpoint for other hosts takes the first port, then the links
    assert plan.remote is not None and plan.remote.stages == frozenset({"infer"})
    assert (plan.remote.join, plan.remote.events_bind, plan.remote.events) == \
        ("tcp://0.0.0.0:7000", "tcp://0.0.0.0:6000", "tcp://box-a:6000")
    assert specs["decode"].outputs == {"frames": "@tcp://0.0.0.0:6001"}
    assert specs["batch"].inputs == (">tcp://127.0.0.1:6001",)  # local to local: loopback
    assert specs["batch"].outputs == {"batches": "@tcp://0.0.0.0:6002"}
    assert specs["infer"].inputs == (">tcp://box-a:6002",)  # the remote side always connects
    assert specs["infer"].outputs == {"track": ">tcp://box-a:6003"}
    assert specs["track"].inputs == ("@tcp://0.0.0.0:6003",)
    assert specs["track"].outputs == {"render": "@tcp://0.0.0.0:6004", "masks": "@tcp://0.0.0.0:6005"}
    assert specs["render"].inputs == (">tcp://127.0.0.1:6004",) and specs["masks"].inputs == (">tcp://127.0.0.1:6005",)
    assert plan.remote.join_advertised == "tcp://box-a:7000"  # what the waiting hint tells a worker to join
    import socket

    anywhere = _plan(tmp_path, transport={"endpoints": "tcp", "bind_host": "0.0.0.0", "remote": ["infer"],
                                          "join_port": 7000})
    assert anywhere.remote is not None and anywhere.remote.join_advertised == f"tcp://{socket.gethostname()}:7000"
    # on loopback, the advertised host is loopback too
    local = _plan(tmp_path, transport={"endpoints": "tcp", "remote": ["masks"]})
    assert local.remote is not None and local.remote.events.startswith("tcp://127.0.0.1:")
    assert _by_name(local)["masks"].inputs[0].startswith(">tcp://127.0.0.1:")


@pytest.mark.parametrize("sections, needle", [
    ({"transport": {"remote": ["infer"]}}, "need transport.endpoints: tcp"),
    ({"transport": {"endpoints": "tcp", "remote": ["decode"]}}, "transport.remote may name"),
    ({"transport": {"endpoints": "tcp", "remote": ["masks"]}, "output": {"video": "o.mp4"}},
     "names masks, which this run does not have"),
    ({"transport": {"endpoints": "tcp", "remote": ["infer", "render"]}, "track": {"enabled": "false"}},
     "cannot both run on other hosts"),
    ({"transport": {"endpoints": "tcp", "remote": ["render"]}, "render": {"workers": 2}},
     "names render, which this run does not have"),
    ({"transport": {"endpoints": "bus"}}, "transport.endpoints must be ipc or tcp"),
])
def test_bad_remote_combinations_are_config_errors(tmp_path: Path, sections: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _plan(tmp_path, **sections)


def test_one_of_several_render_workers_can_run_on_another_host(tmp_path: Path) -> None:
    plan = _plan(tmp_path, transport={"endpoints": "tcp", "remote": ["render-1"]}, render={"workers": 2})
    assert plan.remote is not None and plan.remote.stages == frozenset({"render-1"})


def test_transport_curve_keys_need_tcp(tmp_path: Path) -> None:
    from streamseg.security import make_keys

    _, secret = make_keys(str(tmp_path / "keys"), "server")
    (tmp_path / "allowed").mkdir()
    curve = {"curve_secret": secret, "curve_clients": str(tmp_path / "allowed")}
    with pytest.raises(ConfigError, match="for tcp endpoints"):
        _plan(tmp_path, transport=curve)
    plan = _plan(tmp_path, transport={**curve, "endpoints": "tcp"})
    assert all(s.curve == {"secret_file": secret, "clients_dir": str(tmp_path / "allowed")} for s in plan.specs)


def test_stream_output_names() -> None:
    assert stream_output("out.mp4", "cam1", several=True) == "out-cam1.mp4"
    assert stream_output("out.mp4", "cam1", several=False) == "out.mp4"
    assert stream_output("out/{stream}/a.jsonl", "c", several=False) == "out/c/a.jsonl"
    assert stream_output("m-{stream}-{stream}.jsonl", "c", several=True) == "m-c-c.jsonl"
    assert stream_output("rtsp://server:8554/live", "c", several=True) == "rtsp://server:8554/live-c"
    assert stream_output("rtmp://server/app/key.flv", "c", several=True) == "rtmp://server/app/key-c.flv"
    assert stream_output("noext", "c", several=True) == "noext-c"
    two = _config(input={"sources": ["a.mp4", "b.mp4"]})
    assert stream_outputs(two, "o.mp4") == {"0": "o-0.mp4", "1": "o-1.mp4"}
    assert stream_outputs(two, None) == {} and stream_outputs(two, "") == {}


def test_every_spec_survives_its_json_form_with_its_section_rebuilt(tmp_path: Path) -> None:
    config = _config(input={"sources": ["a.mp4", "b.mp4"], "stream_ids": ["l", "r"], "options": {"x": "1"}},
                     output={"video": "o.mp4", "masks": "m.jsonl", "publish": "tcp://127.0.0.1:5556"},
                     render={"workers": 2}, encode={"workers": 2}, model={"weights": None, "score_thresh": 0.3},
                     transport={"endpoints": "tcp"})
    plan = build_specs(config, str(tmp_path))
    for spec in plan.specs:
        raw = spec_to_json(spec)
        json.loads(raw)  # plain JSON: no pickle on the wire
        again = spec_from_json(raw)
        assert again == spec, spec.name
        assert type(again.config) is type(spec.config) and isinstance(again.inputs, tuple)
    decode = spec_from_json(spec_to_json(plan.specs[0]))
    assert decode.config.sources == ("a.mp4", "b.mp4") and decode.config.options == {"x": "1"}
    # what a replacement gets: attempt, previous cause and checkpoint, instance
    replacement = dataclasses.replace(plan.specs[0], attempt=2, instance="abc",
                                      previous={"cause": "worker process died (SIGSEGV)", "resumed_at": 20})
    assert spec_from_json(spec_to_json(replacement)) == replacement


@pytest.mark.parametrize("raw, needle", [
    (b"not json", "cannot read"),
    (b"[1, 2]", "cannot read"),
    (json.dumps({"name": "x", "stage": "teleport", "config": None, "params": {}, "events": "e"}).encode(),
     "unknown stage 'teleport'"),
    (json.dumps({"name": "x", "stage": "masks", "config": None, "params": {}, "events": "e", "evil": 1}).encode(),
     "unknown fields"),
    (json.dumps({"name": "x", "stage": "batch", "config": {"max_btch": 2}, "params": {}, "events": "e"}).encode(),
     "batch.max_btch"),
    (json.dumps({"name": "x", "stage": "batch", "config": {"max_batch": "two"}, "params": {}, "events": "e"}).encode(),
     "batch.max_batch"),
    (json.dumps({"stage": "masks", "config": None, "params": {}, "events": "e"}).encode(), "cannot read"),
])
def test_a_spec_that_cannot_be_read_is_a_config_error(raw: bytes, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        spec_from_json(raw)


def test_tracking_follows_video_streams_and_needs_masks(tmp_path: Path) -> None:
    """``track.enabled: auto`` tracks video (files, cameras, network streams), not image folders; ``false``
    plans no track stage and leaves the model's threshold alone; ``true`` with a mask-less model is an error."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    sources = {"sources": ["a.mp4", str(folder), "rtsp://cam/s"]}
    specs = _by_name(_plan(tmp_path, input=sources))
    assert specs["track"].params["tracked"] == ["0", "2"] and specs["track"].params["streams"] == ["0", "1", "2"]
    assert _by_name(_plan(tmp_path, input=sources, track={"enabled": "true"}))["track"].params["tracked"] == \
        ["0", "1", "2"]
    untracked = _by_name(_plan(tmp_path, track={"enabled": "false"}))
    assert "track" not in untracked and untracked["infer"].params == {"ports": ["render", "masks"],
                                                                     "image_ports": ["render"], "keep_from": None}
    assert "track" not in _by_name(_plan(tmp_path, input={"path": str(folder)}))
    assert "track" not in _by_name(_plan(tmp_path, model={"name": "keypointrcnn_resnet50_fpn"}))
    with pytest.raises(ConfigError, match="track.enabled is true, but model keypointrcnn_resnet50_fpn has no mask"):
        _plan(tmp_path, model={"name": "keypointrcnn_resnet50_fpn"}, track={"enabled": "true"})
