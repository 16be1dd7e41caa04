"""The service's HTTP API, on aiohttp, in a thread of its own beside the supervisor's loop.

Every answer is JSON; an error is ``{"error": "what is wrong"}`` with a 4xx or 5xx status, and a
refused request changes nothing in the service. With a token (``serve.token_file``) every request
carries it, as ``Authorization: Bearer TOKEN`` or, for a browser's page and its video and updates,
as ``?token=TOKEN``; it is compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..config import Config
from ..errors import ConfigError
from ..runtime.metrics import exposition
from .openapi import openapi
from .supervisor import ServiceSupervisor
from .view import LiveView

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Api:
    """The routes, over a :class:`ServiceSupervisor`."""

    def __init__(self, supervisor: ServiceSupervisor, config: Config, token: str | None,
                 views: list[str] | None = None) -> None:
        """``views``: where the render workers publish the live view (none: no live view)."""
        self.supervisor = supervisor
        self.config = config
        self.token = token
        self.stopping = False
        self.view = LiveView(views, supervisor.listing, lambda: self.stopping) if views else None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.serve.max_body_bytes,
                              middlewares=[self._errors, self._auth])
        app.add_routes([web.get("/streams", self.list_streams), web.post("/streams", self.add_stream),
                        web.get("/streams/{id}", self.get_stream), web.delete("/streams/{id}", self.remove_stream),
                        web.get("/healthz", self.healthz), web.get("/readyz", self.readyz),
                        web.get("/openapi.json", self.describe), web.get("/metrics", self.metrics)])
        if self.view is not None:
            app.add_routes(self.view.routes())
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own refusals (404, 405, 413) as JSON errors too."""
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.serve.max_body_bytes
            return _error(413, f"the body is larger than {limit} bytes (serve.max_body_bytes)")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason)
        except Exception as exc:  # noqa: BLE001 - a bug here: said, and the service goes on
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() \
                or request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _error(401, "a valid token is required (Authorization: Bearer TOKEN)")
        elif request.url.host not in LOOPBACK:
            # without a token the service is for this machine only: a page elsewhere that makes the
            # browser ask it under another name (DNS rebinding) is refused
            return _error(403, f"host {request.host!r} is not this machine's loopback (give the service a token)")
        if request.method == "POST" and request.content_type != "application/json":
            # a page's form or plain-text request cannot add streams: browsers send this type only
            # after asking (CORS), which this service never allows
            return _error(415, "the body must be sent as application/json")
        return await handler(request)

    async def list_streams(self, request: web.Request) -> web.Response:
        return web.json_response(self.supervisor.listing())

    async def get_stream(self, request: web.Request) -> web.Response:
        stream = self.supervisor.stream(request.match_info["id"])
        return _error(404, f"no stream {request.match_info['id']!r}") if stream is None else web.json_response(stream)

    async def add_stream(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            return _error(400, f"the body is not JSON: {exc}")
        wait = self.config.serve.add_timeout_s + 10.0
        status, answer = await self._ask("add", body, wait)
        response = web.json_response(answer, status=status)
        if status == 201:
            response.headers["Location"] = f"/streams/{answer['id']}"
        return response

    async def remove_stream(self, request: web.Request) -> web.Response:
        wait = self.config.runtime.stop_timeout_s + 10.0
        status, answer = await self._ask("remove", request.match_info["id"], wait)
        return web.json_response(answer, status=status)

    async def _ask(self, kind: str, argument: Any, wait: float) -> tuple[int, Any]:
        future = self.supervisor.ask(kind, argument)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), wait)
        except asyncio.TimeoutError:
            return 504, {"error": f"no answer within {wait:g} s (the service goes on with it)"}

    async def healthz(self, request: web.Request) -> web.Response:
        health = self.supervisor.health()
        return web.json_response(health, status=200 if health["healthy"] else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.supervisor.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Every process's metrics (:mod:`streamseg.runtime.metrics`), in Prometheus's text format."""
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, exposition)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def describe(self, request: web.Request) -> web.Response:
        return web.json_response(openapi())


def load_token(config: Config) -> str | None:
    """The token of ``serve.token_file``; a ConfigError when the API binds beyond loopback without one."""
    host = config.serve.http.rpartition(":")[0].strip("[]")
    if not config.serve.token_file:
        if host not in LOOPBACK:
            raise ConfigError(f"serve.http binds {host}, beyond this machine: give a token (serve --token-file)")
        return None
    try:
        with open(config.serve.token_file) as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {config.serve.token_file}: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"the token in {config.serve.token_file} is shorter than 16 characters")
    return token


class ApiThread(threading.Thread):
    """Serves the API on its own event loop until :meth:`stop`."""

    def __init__(self, api: Api, http: str) -> None:
        super().__init__(name="streamseg-api", daemon=True)
        self.api = api
        host, _, port = http.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.runner: web.AppRunner | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.runner = web.AppRunner(self.api.app(), access_log=None, shutdown_timeout=3.0)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, self.host, self.port)
            self.loop.run_until_complete(site.start())
            sockets = self.runner.addresses
            if sockets and self.port == 0:
                self.port = int(sockets[0][1])
        except BaseException as exc:  # noqa: BLE001 - said by start(), in the caller's thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def start_serving(self) -> None:
        """Start, and raise a ConfigError when the address cannot be bound."""
        self.start()
        self.ready.wait(30.0)
        if self.error is not None:
            raise ConfigError(f"cannot serve HTTP at {self.host}:{self.port}: {self.error}") from None

    def stop(self) -> None:
        if self.is_alive():
            self.api.stopping = True  # the live view's open connections end within a second
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.join(10.0)
