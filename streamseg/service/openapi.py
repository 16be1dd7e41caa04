"""The OpenAPI 3.1 description of the service's HTTP API (``GET /openapi.json``)."""

from __future__ import annotations

from typing import Any

from .. import __version__


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


POINT = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
         "description": "[x, y] in the source's pixels"}
ANALYTICS = {
    "type": "object",
    "additionalProperties": False,
    "description": "the stream's zones and lines (as the config's analytics section, without 'stream'): "
                   "counted in published counts messages and drawn on its video; needs tracking",
    "properties": {
        "zones": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "points"],
            "properties": {"name": {"type": "string"}, "points": {"type": "array", "items": POINT, "minItems": 3}}}},
        "lines": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "points"],
            "properties": {"name": {"type": "string"},
                           "points": {"type": "array", "items": POINT, "minItems": 2, "maxItems": 2}}}},
        "anchor": {"enum": ["bottom", "center"]},
        "counts_every_s": {"type": "number", "exclusiveMinimum": 0},
    },
}
STREAM = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "source": {"type": "string", "description": "path or URL, a URL's password shown as ***"},
        "kind": {"enum": ["file", "images", "network", "device"]},
        "state": {"enum": ["starting", "running", "stopping", "ended", "failed", "removed"]},
        "detail": {"type": "string", "description": "why it ended or failed, or its live source's last status"},
        "loop": {"type": ["boolean", "null"]},
        "output": {"type": ["string", "null"], "description": "its annotated video (file or stream URL)"},
        "masks": {"type": ["string", "null"], "description": "its masks file (JSON Lines)"},
        "added": {"type": "number", "description": "when it was added (Unix time)"},
        "frames": {"type": "integer", "description": "frames its decoder has sent"},
        "restarts": {"type": "integer", "description": "times its decoder was replaced after a crash"},
        "analytics": {"oneOf": [ANALYTICS, {"type": "null"}]},
    },
    "required": ["id", "source", "state"],
}
NEW_STREAM = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "source": {"type": "string", "description": "a file or camera inside serve --allow-dir, or a URL of an "
                                                    "allowed scheme (serve.allow_schemes)"},
        "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
               "description": "default: stream-N"},
        "loop": {"type": "boolean", "description": "start a file again when it ends"},
        "output": {"type": "string", "description": "annotated video: an MP4 inside serve --allow-dir, or an "
                                                    "rtsp:// or rtmp:// URL; default: output.video with {stream}"},
        "masks": {"type": "string", "description": "masks file inside serve --allow-dir; default: output.masks "
                                                   "with {stream}"},
        "analytics": {"oneOf": [ANALYTICS, {"type": "null"}]},
    },
    "required": ["source"],
}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
ERRORS = {str(code): _json(ERROR, text) for code, text in (
    (400, "malformed JSON, an unknown field, a bad value"), (401, "no valid token"),
    (403, "a path outside the allowed folders, a URL scheme not allowed"), (404, "no such stream"),
    (409, "the id or an output file is in use"), (413, "the body is too large"),
    (422, "the source cannot be opened, a folder does not exist, a zone or line is wrong"),
    (429, "serve.max_streams reached"),
    (503, "the service is stopping"), (504, "the source did not open in time"))}


def openapi() -> dict[str, Any]:
    """The description, built from the schemas above."""
    stream_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamseg serve", "version": __version__,
                 "description": "Streams added and removed while the model keeps running."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "query": {"type": "apiKey", "in": "query", "name": "token"}}},
        "security": [{}, {"bearer": []}, {"query": []}],
        "paths": {
            "/streams": {
                "get": {"summary": "the streams", "responses": {"200": _json({"type": "array", "items": STREAM},
                                                                             "every stream")}},
                "post": {"summary": "add a stream (answered once its source is open)",
                         "requestBody": {"required": True, "content": {"application/json": {"schema": NEW_STREAM}}},
                         "responses": {"201": _json(STREAM, "added and running"), **ERRORS}},
            },
            "/streams/{id}": {
                "parameters": stream_id,
                "get": {"summary": "one stream", "responses": {"200": _json(STREAM, "the stream"),
                                                               "404": ERRORS["404"]}},
                "delete": {"summary": "remove a stream (answered once its outputs are finished and closed)",
                           "responses": {"200": _json(STREAM, "removed"), "404": ERRORS["404"]}},
            },
            "/healthz": {"get": {"summary": "every stage and stream, and why one is not healthy",
                                 "responses": {"200": _json({"type": "object"}, "healthy"),
                                               "503": _json({"type": "object"}, "not healthy")}}},
            "/readyz": {"get": {"summary": "whether streams can be added",
                                "responses": {"200": _json({"type": "object"}, "ready"),
                                              "503": _json({"type": "object"}, "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics of every process (text format)",
                                 "responses": {"200": {"description": "the metrics",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/": {"get": {"summary": "the live view: the list of streams (HTML)",
                          "responses": {"200": {"description": "a page"}}}},
            "/streams/{id}/view": {"parameters": stream_id,
                                   "get": {"summary": "a stream's live view: its video beside its detections (HTML)",
                                           "responses": {"200": {"description": "a page"}}}},
            "/streams/{id}/video.mjpeg": {"parameters": stream_id,
                                          "get": {"summary": "the annotated video, live (multipart JPEG)",
                                                  "responses": {"200": {"description": "MJPEG"}}}},
            "/streams/{id}/events": {"parameters": stream_id,
                                     "get": {"summary": "the detections of each frame shown (server-sent events)",
                                             "responses": {"200": {"description": "text/event-stream"}}}},
            "/openapi.json": {"get": {"summary": "this description",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
    }
