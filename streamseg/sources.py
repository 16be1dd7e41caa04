"""What an input or output string is: a video file, image folder or glob, network stream, camera,
or an output stream URL. Plain string rules, with no media library imported, so that the command
line and the planner stay light; :mod:`streamseg.stages.readers` opens inputs.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
SOURCE_KINDS = ("file", "images", "network", "device")
STREAM_FORMATS = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv"}
"""Output URL scheme -> FFmpeg muxer that pushes to such a server."""


def source_kind(url: str) -> str:
    """``network`` (a URL PyAV streams from), ``device`` (``/dev/videoN``), ``images`` (a folder
    or a glob pattern of still images) or ``file``."""
    if "://" in url and urlsplit(url).scheme.lower() in NETWORK_SCHEMES:
        return "network"
    if url.startswith("/dev/video"):
        return "device"
    if os.path.isdir(url) or (any(c in url for c in "*?[") and not os.path.exists(url)):
        return "images"
    return "file"


def is_live(url: str, setting: str) -> bool:
    """Whether ``url`` is read as a live source: ``setting`` ``auto`` says network streams and
    cameras are live, files and images not; ``true``/``false`` force it."""
    if setting == "auto":
        return source_kind(url) in ("network", "device")
    return setting == "true"


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs, errors and published messages."""
    parts = urlsplit(url) if "://" in url else None
    if parts is None or not parts.password:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def stream_format(path: str) -> str | None:
    """The muxer for an output stream URL (``rtsp://``, ``rtmp://``), or None for a file."""
    scheme, sep, _ = path.partition("://")
    return STREAM_FORMATS.get(scheme.lower()) if sep else None


def describe_input(info: dict[str, Any]) -> str:
    """One line on what an input is (``VideoReader.describe`` with ``shown``, ``rotation`` and, at its
    end, ``variable_rate``): container, codec, size as stored and as shown, frame rate, which video stream."""
    text = f"{info['container']}, {info['codec']}"
    if info.get("pix_fmt"):
        text += f" {info['pix_fmt']}"
    text += f", {info['stored']}"
    if info.get("rotation"):
        text += f" shown {info['shown']} (turned {info['rotation']} degrees)"
    if "variable_rate" in info:
        text += ", variable frame rate" if info["variable_rate"] else ", constant frame rate"
    if info.get("video_streams", 1) > 1:
        text += f", video stream {info['video_stream']} of {info['video_streams']}"
    return text
