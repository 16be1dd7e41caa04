"""The ``streamseg`` command line. Exit codes are listed in :mod:`streamseg.errors`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from . import __version__
from .errors import Interrupted, StreamsegError

log = logging.getLogger("streamseg")


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="segment a video file: annotated MP4 and/or per-frame masks",
                       description="Run Mask R-CNN over a video file through the multi-process pipeline "
                                   "(decode -> batch -> infer -> render -> encode, mask writer beside encode).")
    p.add_argument("input", help="video file to read")
    p.add_argument("-o", "--output", metavar="FILE", help="annotated video to write (H.264 MP4)")
    p.add_argument("--masks", metavar="FILE", help="per-frame masks to write (JSON Lines, COCO RLE)")
    p.add_argument("--model", metavar="NAME", help="model from the registry (see `streamseg models`)")
    p.add_argument("--weights", metavar="FILE", help="local weights file (state_dict or torchvision checkpoint)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--score-thresh", type=float, metavar="P", help="drop instances scoring below P (default 0.5)")
    p.add_argument("--mask-thresh", type=float, metavar="P", help="mask pixel probability threshold (default 0.5)")
    p.add_argument("--max-batch", type=int, metavar="N", help="most frames per inference batch (default 4)")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file (configs/, pipelines/); may be given more than once, later wins")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set batch.max_wait_ms=20 (applied last)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import run_config

    flags: dict[str, dict[str, Any]] = {
        "input": {"path": args.input},
        "output": {"video": args.output, "masks": args.masks},
        "model": {"name": args.model, "weights": args.weights, "device": args.device,
                  "score_thresh": args.score_thresh, "mask_thresh": args.mask_thresh},
        "batch": {"max_batch": args.max_batch},
        "runtime": {"quiet": args.quiet or None,
                    "log_level": {0: None, 1: "INFO"}.get(args.verbose, "DEBUG")},
    }
    # flags given on the command line override the config files; absent ones leave them alone
    layer = {section: {k: v for k, v in values.items() if v is not None} for section, values in flags.items()}
    if args.output is None and args.masks is None:
        layer.pop("output")
    config = load_config(args.config, [layer], args.sets)
    logging.getLogger().setLevel(config.runtime.log_level.upper())
    summary = run_config(config)
    if not config.runtime.quiet:
        print(summary.table(), file=sys.stderr)
        for kind, path in summary.outputs.items():
            print(f"wrote {kind}: {path}", file=sys.stderr)
    if summary.interrupted:
        print(f"streamseg: interrupted; outputs hold the {summary.frames} frames done", file=sys.stderr)
        return Interrupted.exit_code
    return 0


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
    sub.add_parser("models", help="list the models streamseg can run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code. Errors are one line on stderr, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="streamseg: %(levelname)s %(message)s")
    handlers = {"run": _run, "models": _models}
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
