"""A service's streams: what a request to add one may say, the checks it must pass, the state
file that keeps the list across a restart of the service, and the ends still being finished.

Every check here is pure (no worker is started): a request that fails one changes nothing. The
errors carry the HTTP status they answer with (:class:`RequestError`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..config import Config, section_from_dict, validate
from ..errors import ConfigError
from ..plan import stream_output
from ..sources import safe_url, source_kind, stream_format
from ..tracking.analytics import check_analytics

log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FIELDS = {"source": str, "id": str, "loop": bool, "output": str, "masks": str, "analytics": dict}
"""What a request to add a stream may carry, and its type."""
KINDS = {str: "string", bool: "boolean", dict: "JSON object"}


class RequestError(Exception):
    """A request the service refuses: ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StreamRequest:
    """A stream to add, checked: its id, source, and where its outputs go ("" for none)."""

    id: str
    source: str
    loop: bool | None = None
    video: str = ""
    masks: str = ""
    analytics: str = ""
    """Its zones and lines: the ``analytics`` section's JSON form, or ""."""

    def saved(self) -> dict[str, Any]:
        """Its form in the state file (and in a request that adds it again)."""
        out: dict[str, Any] = {"id": self.id, "source": self.source, "output": self.video, "masks": self.masks}
        if self.loop is not None:
            out["loop"] = self.loop
        if self.analytics:
            out["analytics"] = self.areas()
        return out

    def areas(self) -> dict[str, Any] | None:
        """Its zones and lines as the API shows them (the request's, with the defaults filled in)."""
        if not self.analytics:
            return None
        section = json.loads(self.analytics)
        for item in (*section["zones"], *section["lines"]):
            del item["stream"]
        return section


@dataclass
class Stream:
    """A stream of the service, as the API shows it."""

    request: StreamRequest
    worker: str
    state: str = "starting"
    """``starting`` (its source is being opened), ``running``, ``stopping`` (being removed: its outputs
    are being finished), ``ended`` (its source ended or was lost for good), ``failed``, ``removed``."""
    detail: str = ""
    """Why it ended or failed, or its live source's last status."""
    added: float = field(default_factory=time.time)
    frames: int = 0
    restarts: int = 0

    def public(self) -> dict[str, Any]:
        """The JSON object of the API: never a URL's password."""
        r = self.request
        return {"id": r.id, "source": safe_url(r.source), "kind": source_kind(r.source), "state": self.state,
                "detail": self.detail, "loop": r.loop, "output": safe_url(r.video) or None, "masks": r.masks or None,
                "added": round(self.added, 3), "frames": self.frames, "restarts": self.restarts,
                "analytics": r.areas()}


def _inside(path: str, folders: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(f)]) == os.path.realpath(f) for f in folders)


def check_request(body: Any, config: Config, taken: set[str], files: set[str], number: int,
                  trusted: bool = False, tracked: bool = True) -> StreamRequest:
    """A request's body checked against the service's rules; ``taken``: the ids in use, ``files``:
    the files in use (every stream's source and outputs, the state and token files, as real paths),
    ``number``: for an id made up when none is given; ``trusted``: a stream of the command line or
    the state file, which need not lie in the allowed folders; ``tracked``: whether the service tracks
    its streams (zones and lines count tracks)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown fields: {', '.join(unknown)} (a stream takes {', '.join(FIELDS)})")
    for name, kind in FIELDS.items():
        if name in body and body[name] is not None and not isinstance(body[name], kind):
            raise RequestError(400, f"{name} must be a {KINDS[kind]}")
        if isinstance(body.get(name), str) and not body[name].isprintable():
            raise RequestError(400, f"{name} holds a control character")
    source = body.get("source")
    if not source:
        raise RequestError(400, "source is required (a file path, a URL or a camera)")
    sid = body.get("id") or f"stream-{number}"
    if not STREAM_ID.fullmatch(sid):
        raise RequestError(400, f"bad stream id {sid[:80]!r}: 1 to 64 letters, digits, '_', '.' or '-', "
                                "starting with a letter or digit")
    if sid in taken:
        raise RequestError(409, f"a stream {sid!r} exists already (remove it first)")
    _check_source(source, config, trusted)
    serve, out = config.serve, config.output
    video = body.get("output") or (stream_output(out.video, sid, True) if out.video else "")
    masks = body.get("masks") or (stream_output(out.masks, sid, True) if out.masks else "")
    if not video and not masks and not out.publish and not out.mqtt and not out.redis:
        raise RequestError(400, "nothing to write: give output and/or masks (the service publishes nothing)")
    if video and video == masks:
        raise RequestError(400, "output and masks are the same file")
    for path, what in ((video, "output"), (masks, "masks")):
        if not path:
            continue
        if stream_format(path) is not None and what == "output":
            if urlsplit(path).scheme.lower() not in serve.allow_schemes and not trusted:
                raise RequestError(403, f"{what} URL scheme {urlsplit(path).scheme!r} is not allowed")
            continue
        if "://" in path:
            urls = " or an rtsp:// or rtmp:// URL" if what == "output" else ""
            raise RequestError(400, f"{what} must be a file path{urls}")
        if body.get(what) and not trusted and not _inside(path, serve.allow_dirs):
            raise RequestError(403, f"{what} {path} is outside the folders this service may write "
                                    f"(serve --allow-dir)")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise RequestError(422, f"{what} folder does not exist: {os.path.dirname(os.path.abspath(path))}")
        if os.path.realpath(path) in files:
            raise RequestError(409, f"{what} {path} is in use (another stream's, or the service's own)")
        if os.path.exists(path) and not os.path.isfile(path):
            raise RequestError(403, f"{what} {path} is not a regular file")
    return StreamRequest(sid, source, body.get("loop"), video, masks, _areas(body.get("analytics"), config, source,
                                                                          tracked))


def _areas(value: dict[str, Any] | None, config: Config, source: str, tracked: bool) -> str:
    """A stream's own zones and lines, checked as the config's ``analytics`` section is (anchor and
    counts_every_s default to the service's), in their JSON form; "" for none. Whether they lie
    inside the frame is checked when the source opens (its decoder knows the size)."""
    if not value:
        return ""
    if not tracked or source_kind(source) == "images":
        raise RequestError(422, "analytics count tracks, and this stream would not be tracked (track.enabled, "
                                "a model without masks, or an image folder)")
    try:
        section = section_from_dict("analytics", {**dataclasses.asdict(config.analytics), **value})
        if any(item.stream for item in (*section.zones, *section.lines)):
            raise ConfigError("analytics: a stream's own zones and lines name no stream (they are its own)")
        check_analytics(section, [])
        validate(dataclasses.replace(config, analytics=section))
    except ConfigError as exc:
        raise RequestError(422, str(exc)) from None
    return json.dumps(dataclasses.asdict(section), separators=(",", ":"))


def _check_source(source: str, config: Config, trusted: bool) -> None:
    kind = source_kind(source)
    if kind == "network":
        scheme = urlsplit(source).scheme.lower()
        if scheme not in config.serve.allow_schemes and not trusted:
            raise RequestError(403, f"sources with URL scheme {scheme!r} are not allowed "
                                    f"(serve.allow_schemes: {', '.join(config.serve.allow_schemes)})")
        return
    if "://" in source:
        raise RequestError(403, f"sources with URL scheme {urlsplit(source).scheme!r} are not allowed")
    if kind == "device":
        if not config.serve.allow_cameras and not trusted:
            raise RequestError(403, f"{source}: cameras are not allowed (serve.allow_cameras)")
        return
    if not trusted and not _inside(source, config.serve.allow_dirs):
        raise RequestError(403, f"{source} is outside the folders this service may read (serve --allow-dir)")
    if kind == "file" and not os.path.exists(source):
        raise RequestError(422, f"input not found: {source}")


def read_state(path: str) -> list[dict[str, Any]]:
    """The request bodies that add the streams of a state file again (none when it does not exist yet)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the state file {path}: {exc}") from None
    streams = data.get("streams") if isinstance(data, dict) else None
    if not isinstance(streams, list):
        raise ConfigError(f"the state file {path} holds no stream list")
    return [{k: v for k, v in s.items() if v not in ("", None)} for s in streams if isinstance(s, dict)]


def write_state(path: str, requests: list[StreamRequest]) -> None:
    """Replace the state file at once (a crash leaves the old one or the new one, never half of one).
    It may hold URLs with passwords: only its owner may read it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".streamseg-state-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "streams": [r.saved() for r in requests]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


class Releases:
    """Streams whose decoder was let go of after a process of it ran (it failed for good, or its
    replacement was ended before it started): the batcher ends downstream what the decoder had sent,
    and their removal is answered once that is done, so that their outputs are finished when
    ``DELETE`` answers.

    The batcher says ``let_go`` (the streams it ended at that input) and then ``ended_downstream``
    for each, once every stage after it has finished it (:meth:`heard`).
    """

    WAIT_S = 30.0
    """How long to wait for the batcher's word before answering anyway (:meth:`overdue`)."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[Stream, float, set[str] | None]] = {}
        """Decoder endpoint -> (its stream, until when to wait, the streams the batcher ended there and
        not yet done downstream: None until it says)."""

    def expect(self, endpoint: str, stream: Stream, now: float) -> None:
        self.pending[endpoint] = (stream, now + self.WAIT_S, None)

    def waits_for(self, stream: Stream) -> bool:
        return any(s is stream for s, _, _ in self.pending.values())

    def heard(self, event: dict[str, Any]) -> list[Stream]:
        """The streams that are settled by the batcher's ``event``."""
        settled = []
        for endpoint, (stream, until, waits) in list(self.pending.items()):
            if event["event"] == "let_go" and event.get("input") == endpoint:
                waits = set(event.get("streams") or ())
            elif event["event"] == "ended_downstream" and waits is not None:
                waits.discard(str(event.get("stream")))
            self.pending[endpoint] = (stream, until, waits)
            if waits == set():
                settled.append(self.pending.pop(endpoint)[0])
        return settled

    def overdue(self, now: float | None = None) -> list[Stream]:
        """The streams waited for longer than :attr:`WAIT_S` (every one, without ``now``)."""
        late = [self.pending.pop(endpoint)[0] for endpoint, (_, until, _) in list(self.pending.items())
                if now is None or now > until]
        for stream in late:
            log.warning("stream %s: no word that its end is done downstream; its removal is answered",
                        stream.request.id)
        return late
