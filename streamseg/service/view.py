"""The live view in a browser: a page per stream with its annotated video playing (MJPEG over HTTP,
which every browser plays in an ``<img>``) and, beside it, the current detections and the counts of
its zones and lines (server-sent events). No plug-in and no script library: the page's own lines
of script.

The render workers draw a stream's frames for the view only while someone watches it (their
publish port ``view`` is an XPUB: it knows its subscribers), at most ``serve.view_fps`` a second,
and publish each as a JPEG with the frame's detections (:func:`~streamseg.stages.render.view_topic`).
Every viewer here is a SUB socket subscribed to its stream's topic; a slow one misses frames (the
publisher never waits).
"""

from __future__ import annotations

import asyncio
import html
import urllib.parse
from typing import Any, AsyncIterator, Callable

import zmq
import zmq.asyncio
from aiohttp import web

WAIT_S = 1.0
"""How often a viewer's loop looks up from waiting for a frame (the service stopping, the stream gone)."""
KEEPALIVE_S = 15.0

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamseg: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #111; color: #eee; }}
a {{ color: #8cf; }} #wrap {{ display: flex; gap: 1em; align-items: flex-start; }}
#video {{ max-width: 75vw; background: #000; }} #detections {{ list-style: none; padding: 0; min-width: 14em; }}
#detections li, #counts li {{ padding: 0.2em 0.4em; border-bottom: 1px solid #333; font-family: monospace; }}
#counts {{ list-style: none; padding: 0; }}
</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""

STREAM = """<p><a href="/{query}">all streams</a> · frame <span id="frame">-</span> ·
<span id="count">0</span> detections</p>
<div id="wrap"><img id="video" alt="{sid}, live" src="/streams/{quoted}/video.mjpeg{query}">
<div><ul id="detections"></ul><ul id="counts"></ul></div></div>
<script>
const source = new EventSource("/streams/{quoted}/events{query}");
source.onmessage = (event) => {{
  const data = JSON.parse(event.data);
  document.getElementById("frame").textContent = data.frame;
  document.getElementById("count").textContent = data.detections.length;
  document.getElementById("detections").replaceChildren(...data.detections.map((d) => {{
    const item = document.createElement("li");
    item.className = "detection";
    item.textContent = d["class"] + " " + d.score.toFixed(2) + (d.track_id === null ? "" : " #" + d.track_id);
    return item;
  }}));
  document.getElementById("counts").replaceChildren(...(data.counts || []).map((c) => {{
    const item = document.createElement("li");
    item.className = "count";
    item.textContent = c.kind === "zone" ? "zone " + c.name + ": " + c.inside + " inside, " + c.entered + " entered"
                                         : "line " + c.name + ": " + c.entered + " in, " + c.out + " out";
    return item;
  }}));
}};
</script>"""


class LiveView:
    """The pages, the video and the detections of the live view; ``streams()`` lists the service's
    streams (its API objects), ``stopping()`` says when to end the open connections."""

    def __init__(self, endpoints: list[str], streams: Callable[[], list[dict[str, Any]]],
                 stopping: Callable[[], bool]) -> None:
        self.endpoints = endpoints
        self.streams = streams
        self.stopping = stopping
        self.ctx: zmq.asyncio.Context | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.index), web.get("/streams/{id}/view", self.page),
                web.get("/streams/{id}/video.mjpeg", self.video), web.get("/streams/{id}/events", self.events)]

    @staticmethod
    def _query(request: web.Request) -> str:
        """The token the page was opened with, passed on to its video and updates (URL-encoded: safe
        in an attribute and in the script's string alike)."""
        token = request.query.get("token")
        return f"?token={urllib.parse.quote(token, safe='')}" if token else ""

    async def index(self, request: web.Request) -> web.Response:
        query = self._query(request)
        rows = "".join(f'<li><a href="/streams/{html.escape(s["id"], quote=True)}/view{query}">'
                       f'{html.escape(s["id"])}</a> {html.escape(s["state"])} · {html.escape(s["source"])}</li>'
                       for s in self.streams())
        body = f"<ul id=\"streams\">{rows}</ul>" if rows else "<p>No stream yet: POST /streams adds one.</p>"
        return web.Response(text=PAGE.format(title="streams", body=body), content_type="text/html")

    def _known(self, request: web.Request) -> str:
        sid = request.match_info["id"]
        if not any(s["id"] == sid for s in self.streams()):
            raise web.HTTPNotFound(reason=f"no stream {sid!r}")
        return sid

    async def page(self, request: web.Request) -> web.Response:
        sid = self._known(request)
        body = STREAM.format(sid=html.escape(sid), quoted=html.escape(sid, quote=True), query=self._query(request))
        return web.Response(text=PAGE.format(title=html.escape(sid), body=body), content_type="text/html")

    def _gone(self, request: web.Request, sid: str) -> bool:
        """Whether a viewer's connection should end: it went away, or its stream did."""
        transport = request.transport
        return transport is None or transport.is_closing() or not any(s["id"] == sid for s in self.streams())

    async def _frames(self, sid: str) -> AsyncIterator[tuple[bytes, bytes] | None]:
        """The stream's view messages (JPEG, detections JSON) as they come; None every ``WAIT_S`` without."""
        if self.ctx is None:
            self.ctx = zmq.asyncio.Context()
        sock = self.ctx.socket(zmq.SUB)  # the live view of one stream, for one viewer
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.SUBSCRIBE, sid.encode() + b"\0")
        for endpoint in self.endpoints:
            sock.connect(endpoint)
        try:
            while not self.stopping():
                try:
                    parts = await asyncio.wait_for(sock.recv_multipart(), WAIT_S)
                except asyncio.TimeoutError:
                    yield None
                    continue
                if len(parts) == 3:
                    yield parts[1], parts[2]
        finally:
            sock.close()

    async def video(self, request: web.Request) -> web.StreamResponse:
        sid = self._known(request)
        response = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            async for item in self._frames(sid):
                if item is None and self._gone(request, sid):
                    break
                if item is not None:
                    jpeg = item[0]
                    await response.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the viewer went away
        return response

    async def events(self, request: web.Request) -> web.StreamResponse:
        sid = self._known(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        idle = 0.0
        try:
            await response.write(b"retry: 2000\n\n")
            async for item in self._frames(sid):
                if item is None and self._gone(request, sid):
                    break
                if item is None:
                    idle += WAIT_S
                    if idle >= KEEPALIVE_S:
                        idle = 0.0
                        await response.write(b": still here\n\n")
                    continue
                idle = 0.0
                await response.write(b"data: " + item[1] + b"\n\n")  # one line of JSON, as the render wrote it
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response
