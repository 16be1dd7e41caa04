"""``streamseg worker``: run a stage for a supervisor on another host (:mod:`streamseg.remote`).

Light at import: the CLI builds its parser from here; the worker's runtime is imported when it runs.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .config import REMOTE_STAGES
from .errors import ConfigError


def worker_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a stage of a pipeline whose supervisor is on another host",
                       description="Join a `streamseg run` that names stages in transport.remote (with "
                                   "transport.endpoints: tcp), run one of them here, and exit when the run ends. "
                                   "If this worker dies or its host vanishes, the run notices within "
                                   "runtime.heartbeat_timeout_s and waits for another worker to join; what this one "
                                   "had not finished is sent to the next.")
    p.add_argument("join", metavar="ENDPOINT", help="the supervisor's join endpoint, e.g. tcp://gpu-host-a:5550")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help=f"only take this stage ({', '.join(REMOTE_STAGES)}; render-N of several render "
                        "workers); repeatable; default: any")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="give up when no stage is handed out within S seconds (default 60)")
    p.add_argument("--curve-key", metavar="NAME.key_secret", help="this worker's CURVE key pair (`streamseg keys`)")
    p.add_argument("--curve-server-key", metavar="SERVER.key", help="the supervisor host's CURVE public key")
    p.add_argument("--metrics", metavar="HOST:PORT", type=_host_port,
                   help="serve this worker's Prometheus metrics at http://HOST:PORT/metrics (default: none)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def worker_command(args: argparse.Namespace) -> int:
    from .remote import serve
    from .security import TransportCurve

    if bool(args.curve_key) != bool(args.curve_server_key):
        raise ConfigError("CURVE needs both --curve-key and --curve-server-key")
    logging.getLogger().setLevel({0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG))
    curve = TransportCurve(args.curve_key, server_file=args.curve_server_key) if args.curve_key else None
    return serve(args.join, tuple(args.stage), curve, args.wait, args.metrics)
