"""The ``streamseg`` command line. Exit codes are listed in :mod:`streamseg.errors`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Sequence

from . import __version__
from .clock import process_started
from .config import LIVE_POLICIES, default, presets
from .errors import ConfigError, InputError, Interrupted, StreamsegError
from .service.cli import serve_command, service_parsers, streams_command
from .worker_cli import worker_command, worker_parser


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="segment video files, streams or cameras: annotated video, masks, published detections",
                       description="Run Mask R-CNN over one or more sources through the multi-process pipeline "
                                   "(decode -> batch -> infer -> track -> render -> encode, mask writer and "
                                   "publisher beside encode); each instance gets a track id. Live sources "
                                   "(network streams, cameras) drop frames before inference when it falls behind "
                                   "and are reconnected when lost; files never drop.",
                       epilog="sources: a video file, a folder or glob of images ('frames/*.jpg'), rtsp://, "
                              "rtmp://, http(s):// (HLS too) URLs, or a camera /dev/videoN. With several sources "
                              "each is a stream with its own outputs ({stream} in -o/--masks is its id; "
                              "without it, -ID is added) and its own published topic.")
    p.add_argument("inputs", nargs="+", metavar="SOURCE", help="what to read (see below); several share one model")
    pipeline_options(p)


def pipeline_options(p: argparse.ArgumentParser) -> None:
    """The options of ``run`` after its sources (``serve`` takes them too)."""
    p.add_argument("-o", "--output", metavar="FILE|URL",
                   help="annotated video: an H.264 MP4 file, or an rtsp:// or rtmp:// URL to push to")
    p.add_argument("--masks", metavar="FILE", help="per-frame masks to write (JSON Lines, COCO RLE)")
    p.add_argument("--stream-id", dest="stream_ids", action="append", metavar="ID",
                   help="name of a source's stream (topic, masks 'stream' field); once per source, in order")
    p.add_argument("--loop", action="store_true", default=None, help="start file sources again when they end")
    p.add_argument("--frames", type=int, metavar="N", help="end each stream after N frames (default: no limit)")
    p.add_argument("--duration", type=float, metavar="S", help="end each stream after S seconds of it")
    p.add_argument("--live", choices=("auto", "true", "false"),
                   help="treat sources as live (drop frames when behind, reconnect); auto: URLs and cameras")
    p.add_argument("--track", choices=("auto", "true", "false"), help="track ids (track.enabled; auto: not images)")
    p.add_argument("--live-policy", choices=LIVE_POLICIES,
                   help=f"what live streams drop while inference is behind (default {default('batch.live_policy')}; "
                        "latest: keep the newest frame)")
    p.add_argument("--rtsp-transport", choices=("tcp", "udp"),
                   help=f"RTSP transport (default {default('input.rtsp_transport')})")
    p.add_argument("--publish", nargs="?", const="tcp://127.0.0.1:5556", metavar="ENDPOINT",
                   help="publish detections on a ZeroMQ PUB socket (default endpoint tcp://127.0.0.1:5556)")
    p.add_argument("--model", metavar="NAME",
                   help=f"model from the registry (see `streamseg models`; default {default('model.name')})")
    p.add_argument("--weights", metavar="FILE", help="local weights file (state_dict or torchvision checkpoint)")
    p.add_argument("--device", help=f"auto, cpu, cuda or cuda:N (default {default('model.device')})")
    p.add_argument("--score-thresh", type=float, metavar="P",
                   help=f"drop instances scoring below P (default {default('model.score_thresh')})")
    p.add_argument("--mask-thresh", type=float, metavar="P",
                   help=f"mask pixel probability threshold (default {default('model.mask_thresh')})")
    p.add_argument("--max-batch", type=int, metavar="N",
                   help=f"most frames per inference batch (default {default('batch.max_batch')})")
    p.add_argument("--config", action="append", default=[], metavar="FILE|NAME",
                   help="a YAML config file, or the name of a preset the package holds "
                        f"({', '.join(presets())}: the repository's configs/ and pipelines/); "
                        "may be given more than once, later wins")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set batch.max_wait_ms=20 (applied last)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus metrics at http://127.0.0.1:PORT/metrics")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")


def pipeline_layer(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config layer of :func:`pipeline_options` and the sources: only the flags given."""
    if args.stream_ids and len(args.stream_ids) != len(args.inputs):
        raise ConfigError(f"--stream-id given {len(args.stream_ids)} times for {len(args.inputs)} sources")
    several = len(args.inputs) > 1
    flags: dict[str, dict[str, Any]] = {
        "input": {"path": args.inputs[0] if len(args.inputs) == 1 else None,
                  "sources": args.inputs if several else None,
                  "stream_id": args.stream_ids[0] if args.stream_ids and not several else None,
                  "stream_ids": args.stream_ids if several else None, "loop": args.loop,
                  "max_frames": args.frames, "duration_s": args.duration,
                  "live": args.live, "rtsp_transport": args.rtsp_transport},
        "output": {"video": args.output, "masks": args.masks, "publish": args.publish},
        "model": {"name": args.model, "weights": args.weights, "device": args.device,
                  "score_thresh": args.score_thresh, "mask_thresh": args.mask_thresh},
        "batch": {"max_batch": args.max_batch, "live_policy": args.live_policy},
        "track": {"enabled": args.track},
        "runtime": {"quiet": args.quiet or None, "metrics_port": args.metrics_port,
                    "log_level": {0: None, 1: "INFO"}.get(args.verbose, "DEBUG")},
    }
    # flags given on the command line override the config files; absent ones leave them alone
    return {section: {k: v for k, v in values.items() if v is not None} for section, values in flags.items()}


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import run_config

    config = load_config(args.config, [pipeline_layer(args)], args.sets)
    logging.getLogger().setLevel(config.runtime.log_level.upper())
    summary = run_config(config, started=args.started)
    if not config.runtime.quiet:
        print(summary.table(), file=sys.stderr)
        for kind, path in summary.outputs.items():
            said = {"published": "published at", "mqtt": "sent to", "redis": "sent to"}.get(kind, f"wrote {kind}:")
            print(f"{said} {path}", file=sys.stderr)
    if summary.interrupted:
        print(f"streamseg: interrupted; outputs hold the {summary.frames} frames done", file=sys.stderr)
        return Interrupted.exit_code
    if summary.lost:
        print(f"streamseg: error: lost the source of stream {', '.join(summary.lost)} and gave up reconnecting; "
              f"outputs hold the {summary.frames} frames done", file=sys.stderr)
        return InputError.exit_code
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size must be positive and even (H.264 yuv420p), got {text!r}")
    return w, h


def _rate(text: str) -> Any:
    from fractions import Fraction

    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"fps must be a number or a fraction like 30000/1001, got {text!r}") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"fps must be positive, got {text!r}")
    return rate


def _add_synth(sub: Any) -> None:
    p = sub.add_parser("synth", help="write a synthetic clip of moving shapes with exact COCO ground truth")
    p.add_argument("output", metavar="OUT.mp4", help="clip to write (H.264 MP4)")
    p.add_argument("--gt", metavar="OUT.json", required=True, help="COCO ground truth to write")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0); the same seed gives the same clip")
    p.add_argument("--frames", type=int, default=300, help="frame count (default 300)")
    p.add_argument("--size", type=_size, default=(320, 240), metavar="WxH", help="frame size (default 320x240)")
    p.add_argument("--fps", type=_rate, default="30", metavar="R", help="frame rate, e.g. 25 or 30000/1001 (default 30)")


def _synth(args: argparse.Namespace) -> int:
    from .tools.synth import write_video

    if args.frames < 1:
        raise ConfigError("--frames must be at least 1")
    gt = write_video(args.output, args.gt, args.seed, args.frames, *args.size, fps=args.fps)
    print(f"wrote {args.output} ({args.frames} frames) and {args.gt} ({len(gt['annotations'])} instances)",
          file=sys.stderr)
    return 0


def _add_train(sub: Any) -> None:
    from .tools import train

    train.add_arguments(sub.add_parser("train", help="train the small default model on synthetic frames (CPU, "
                                       "about 40 min)"))


def _train(args: argparse.Namespace) -> int:
    from .tools import train

    return train.main(args)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="COCO AP (box, mask, keypoints) of a masks JSONL against COCO ground truth; "
                       "with track ids on both sides, tracking too (HOTA, IDF1, MOTA, ID switches, track AP)")
    p.add_argument("predictions", metavar="PRED.jsonl", help="masks JSON Lines from `streamseg run --masks`")
    p.add_argument("ground_truth", metavar="GT.json", help="COCO ground truth (streamseg synth, or val2017-style)")
    p.add_argument("--kpt-sigma", type=float, metavar="S",
                   help="OKS sigma of every keypoint (default: COCO's for 17 person keypoints, else 0.05)")
    p.add_argument("--json", metavar="FILE", help="also write the stats as JSON")


def _eval(args: argparse.Namespace) -> int:
    import json

    from .tools.evaluate import evaluate, load_ground_truth, read_predictions
    from .tools.tracking_eval import tracking_report

    records, gt = read_predictions(args.predictions), load_ground_truth(args.ground_truth)
    stats = evaluate(records, gt, args.kpt_sigma)
    print(" ".join(f"{task} AP {values['AP']:.3f}" for task, values in stats.items()))
    text, stats["tracking"] = tracking_report(records, gt)
    print(text, file=sys.stdout if stats["tracking"] else sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=2)
    return 0


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the main job: a held-out synthetic clip through the whole pipeline, with AP and fps")
    p.add_argument("--out", metavar="DIR", default="streamseg-demo", help="output folder (default ./streamseg-demo)")
    p.add_argument("--frames", type=int, default=300, help="clip length (default 300)")
    p.add_argument("--seed", type=int, default=7, help="held-out scene seed, never used in training (default 7)")
    p.add_argument("--size", type=_size, default=(320, 240), metavar="WxH", help="frame size (default 320x240)")
    p.add_argument("--model", default=default("model.name"),
                   help=f"model name (default: the shipped {default('model.name')})")
    p.add_argument("--weights", metavar="FILE", help="local weights file for the model")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _demo(args: argparse.Namespace) -> int:
    import os

    from .models.registry import shipped_card
    from .pipeline import run
    from .tools.evaluate import evaluate, load_ground_truth, read_predictions
    from .tools.synth import TRAIN_SEED_FLOOR, is_training_seed, write_video

    if is_training_seed(args.seed):
        raise ConfigError(f"--seed must be below {TRAIN_SEED_FLOOR}: higher seeds are training scenes")
    os.makedirs(args.out, exist_ok=True)
    clip, gt_path = os.path.join(args.out, "input.mp4"), os.path.join(args.out, "ground_truth.json")
    video, masks = os.path.join(args.out, "annotated.mp4"), os.path.join(args.out, "masks.jsonl")
    print(f"streamseg demo: generating a held-out clip (seed {args.seed}, {args.frames} frames, "
          f"{args.size[0]}x{args.size[1]})", file=sys.stderr)
    write_video(clip, gt_path, args.seed, args.frames, *args.size)
    print(f"streamseg demo: running the pipeline with {args.model}", file=sys.stderr)
    summary = run(clip, video, masks=masks, model__name=args.model, model__weights=args.weights,
                  runtime__quiet=args.quiet or not sys.stderr.isatty())
    wall_s = time.monotonic() - args.started
    if not args.quiet:
        print(summary.table(), file=sys.stderr)
    stats = evaluate(read_predictions(masks), load_ground_truth(gt_path), verbose=False)
    kp = stats.get("keypoints", {}).get("AP")
    print(f"mask AP {stats['segm']['AP']:.3f}  mask AP50 {stats['segm']['AP50']:.3f}  "
          f"box AP {stats['bbox']['AP']:.3f}  keypoint AP {'n/a' if kp is None else f'{kp:.3f}'}  "
          f"{summary.frames / wall_s:.1f} fps end to end ({summary.frames} frames in {wall_s:.1f} s, clip "
          f"generation and start-up included); {summary.fps:.1f} fps after start-up")
    suite = shipped_card().get("suite") if args.model == "streamseg-small" and not args.weights else None
    if suite:  # the shipped model: say what one scene of the kind it was trained on is worth
        print(f"That is one held-out scene (seed {args.seed}, {args.size[0]}x{args.size[1]}, of the kind the model was "
              f"trained on); over the accuracy suite's {suite['scenes']} held-out scenes (all kinds, up to 1280x720) "
              f"it scores, pooled, mask AP {suite['mask_AP']:.3f}, box AP {suite['box_AP']:.3f}, keypoint AP "
              f"{suite['keypoint_AP']:.3f}; worst scene mask AP {suite['worst_mask_AP']:.3f} (benchmarks/accuracy.py)")
    print(f"wrote {video}, {masks}, {clip}, {gt_path}")
    return 0


def _add_subscribe(sub: Any) -> None:
    p = sub.add_parser("subscribe", help="print or save published detections (JSON Lines)")
    p.add_argument("endpoint", help="the publisher's endpoint, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--topic", metavar="STREAM", help="only this stream id (default: every stream)")
    p.add_argument("-o", "--output", metavar="FILE", help="append messages to FILE instead of printing them")
    p.add_argument("--count", type=int, metavar="N", help="stop after N frame messages")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds without a message")
    p.add_argument("--forever", action="store_true", help="keep listening after end of stream")
    p.add_argument("--curve-key", metavar="NAME.key_secret", help="our CURVE key pair (`streamseg keys`)")
    p.add_argument("--curve-server-key", metavar="SERVER.key", help="the publisher's CURVE public key file")


def _add_keys(sub: Any) -> None:
    p = sub.add_parser("keys", help="make a CURVE key pair for encrypted, authenticated publishing",
                       description="Write DIR/NAME.key (public: give it to the other side) and "
                                   "DIR/NAME.key_secret (keep it). The publisher takes its own secret file "
                                   "(output.publish_curve_secret) and a folder of allowed subscribers' public "
                                   "keys (output.publish_curve_clients); a subscriber takes its own secret file "
                                   "and the publisher's public key (--curve-key, --curve-server-key).")
    p.add_argument("folder", metavar="DIR", help="where to write the key files")
    p.add_argument("--name", default="streamseg", help="file name stem (default streamseg)")


def _keys(args: argparse.Namespace) -> int:
    from .security import make_keys

    public, secret = make_keys(args.folder, args.name)
    print(f"wrote {public} (public) and {secret} (secret, mode 600)", file=sys.stderr)
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    import json

    from .client import Subscriber

    out = open(args.output, "a", encoding="utf-8") if args.output else sys.stdout
    frames = 0
    try:
        with Subscriber(args.endpoint, args.topic, args.timeout, until_end=not args.forever,
                        curve_secret=args.curve_key, curve_server_key=args.curve_server_key) as subscriber:
            for message in subscriber.messages():
                out.write(json.dumps(message, separators=(",", ":")) + "\n")
                out.flush()
                frames += message["type"] == "frame"
                if args.count is not None and frames >= args.count:
                    break
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"streamseg subscribe: {frames} frames received", file=sys.stderr)
    return 0


def _add_recover(sub: Any) -> None:
    p = sub.add_parser("recover", help="make a playable MP4 of the journal an unfinished video output left "
                                       "(.NAME.streamseg-journal beside it)")
    p.add_argument("journal", metavar="JOURNAL", help="the .NAME.streamseg-journal file the run named")
    p.add_argument("output", metavar="OUT.mp4", help="the MP4 to write (on a disk with room)")
    p.add_argument("--keep", action="store_true", help="keep the journal (default: removed once OUT.mp4 is written)")


def _recover(args: argparse.Namespace) -> int:
    from .tools.recover import command

    return command(args.journal, args.output, args.keep)


def _models(args: argparse.Namespace) -> int:
    from .models import available

    for name, description in available().items():
        print(f"{name:<28} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render ``--help`` in the docs)."""
    parser = argparse.ArgumentParser(prog="streamseg", description="Mask R-CNN instance segmentation over video.")
    parser.add_argument("--version", action="version", version=f"streamseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_demo(sub)
    _add_synth(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_subscribe(sub)
    _add_keys(sub)
    worker_parser(sub)
    _add_recover(sub)
    service_parsers(sub, pipeline_options)
    sub.add_parser("models", help="list the models streamseg can run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code. Errors are one line on stderr, never a traceback.

    Times in the summary count from the process's start (from the call, when ``argv`` is given)."""
    started = process_started() if argv is None else time.monotonic()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    logging.basicConfig(level=logging.WARNING, format="streamseg: %(levelname)s %(message)s")
    handlers = {"run": _run, "demo": _demo, "synth": _synth, "train": _train, "eval": _eval, "subscribe": _subscribe,
                "keys": _keys, "worker": worker_command, "recover": _recover, "models": _models,
                "serve": lambda a: serve_command(a, pipeline_layer(a)), "streams": streams_command}
    try:
        return handlers[args.command](args)
    except StreamsegError as exc:
        print(f"streamseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("streamseg: interrupted", file=sys.stderr)
        return Interrupted.exit_code


if __name__ == "__main__":
    sys.exit(main())
