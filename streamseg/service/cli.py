"""``streamseg serve`` and ``streamseg streams add|rm|ls`` (the command line over the service's API).

Light at import: the CLI builds its parser from here; the service itself is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Callable

from ..config import default
from ..errors import ConfigError, StreamsegError


def service_parsers(sub: Any, pipeline_options: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("serve", help="a long-running service: streams added and removed over HTTP, health and live "
                                     "view, the model never restarted",
                       description="Run the pipeline as a service: the model and every stage after the decoders "
                                   "start once; streams are added (POST /streams) and removed (DELETE "
                                   "/streams/ID) while it runs, each with its own outputs. SIGTERM or Ctrl-C "
                                   "ends every stream, finishes every output, and stops.",
                       epilog="SOURCEs given here (and the streams of --state) are added at the start. "
                              "The API: GET /streams, POST /streams {\"source\": ..., \"id\": ..., \"loop\": ..., "
                              "\"output\": ..., \"masks\": ...}, GET and DELETE /streams/ID, GET /healthz, "
                              "/readyz, /openapi.json. Sources and outputs added over the API must lie in an "
                              "--allow-dir folder, or be URLs of an allowed scheme (serve.allow_schemes).")
    p.add_argument("inputs", nargs="*", metavar="SOURCE", help="streams to start with (optional)")
    pipeline_options(p)
    p.add_argument("--http", metavar="HOST:PORT",
                   help=f"where the API listens (default {default('serve.http')}; port 0: any free one, "
                        "said on stderr); beyond loopback it needs --token-file")
    p.add_argument("--allow-dir", dest="allow_dirs", action="append", metavar="DIR",
                   help="a folder whose files may be sources and outputs of streams added over the API "
                        "(repeatable; cameras: --set serve.allow_cameras=true)")
    p.add_argument("--state", metavar="FILE", help="keep the stream list in FILE; started again with it, "
                                                   "the service adds them back")
    p.add_argument("--token-file", metavar="FILE", help="every request must carry the token in FILE "
                                                        "(Authorization: Bearer TOKEN)")

    p = sub.add_parser("streams", help="add, remove or list the streams of a running `streamseg serve`",
                       description="The command line over a service's HTTP API.")
    p.add_argument("--url", default=f"http://{default('serve.http')}",
                   help="the service (default %(default)s)")
    p.add_argument("--token-file", metavar="FILE", help="the service's token (serve --token-file)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add a stream; answers once its source is open")
    add.add_argument("source", help="file or camera (inside the service's --allow-dir) or URL")
    add.add_argument("--id", help="the stream's id (default: stream-N)")
    add.add_argument("--loop", action="store_true", default=None, help="start a file again when it ends")
    add.add_argument("-o", "--output", metavar="FILE|URL", help="its annotated video")
    add.add_argument("--masks", metavar="FILE", help="its masks file (JSON Lines)")
    add.add_argument("--analytics", metavar="FILE", type=_areas,
                     help="its zones and lines: a YAML or JSON file of the analytics section's form")
    rm = verbs.add_parser("rm", help="remove a stream; answers once its outputs are finished")
    rm.add_argument("id")
    verbs.add_parser("ls", help="list the streams")


def serve_command(args: argparse.Namespace, layer: dict[str, dict[str, Any]]) -> int:
    """Run ``streamseg serve``: the sources given are streams to start with."""
    import dataclasses
    import logging

    from ..config import load_config
    from . import serve

    flags = {"http": args.http, "state": args.state, "token_file": args.token_file,
             "allow_dirs": tuple(args.allow_dirs) if args.allow_dirs else None}
    layer["serve"] = {k: v for k, v in flags.items() if v is not None}
    config = load_config(args.config, [layer], args.sets)
    logging.getLogger().setLevel(config.runtime.log_level.upper())
    initial = [{"source": url, "id": sid} for sid, url in config.input.streams()]
    config = dataclasses.replace(config, input=dataclasses.replace(config.input, path=None, sources=(),
                                                                   stream_id=None, stream_ids=()))
    return serve(config, initial, lambda line: print(f"streamseg: {line}", file=sys.stderr, flush=True))


def streams_command(args: argparse.Namespace) -> int:
    """``streamseg streams``: one request to the service; its answer printed."""
    base = args.url.rstrip("/")
    if args.verb == "add":
        body = {k: v for k, v in (("source", args.source), ("id", args.id), ("loop", args.loop),
                                  ("output", args.output), ("masks", args.masks), ("analytics", args.analytics))
                if v is not None}
        status, answer = _request("POST", f"{base}/streams", args.token_file, body)
    elif args.verb == "rm":
        status, answer = _request("DELETE", f"{base}/streams/{args.id}", args.token_file)
    else:
        status, answer = _request("GET", f"{base}/streams", args.token_file)
    if status >= 400:
        raise ConfigError(f"{status}: {answer.get('error', answer) if isinstance(answer, dict) else answer}")
    if args.verb == "ls":
        for s in answer:
            print(f"{s['id']:<20} {s['state']:<9} {s['frames']:>8} frames  {s['source']}"
                  + (f"  ({s['detail']})" if s.get("detail") else ""))
    else:
        print(json.dumps(answer, indent=1))
    return 0


def _areas(path: str) -> dict[str, Any]:
    """A file of zones and lines (``zones:``, ``lines:``..., or those under ``analytics:``)."""
    import yaml

    try:
        with open(path) as f:
            areas = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None
    areas = areas.get("analytics", areas) if isinstance(areas, dict) else areas
    if not isinstance(areas, dict):
        raise argparse.ArgumentTypeError(f"{path}: expected zones and lines (a mapping)")
    return areas


def _request(method: str, url: str, token_file: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token_file:
        try:
            with open(token_file) as f:
                headers["Authorization"] = f"Bearer {f.read().strip()}"
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StreamsegError(f"cannot reach the service at {url}: {reason}") from None
