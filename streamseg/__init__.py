"""streamseg: Mask R-CNN instance segmentation over video, as a multi-process ZeroMQ pipeline.

From Python::

    import streamseg
    summary = streamseg.run("in.mp4", "annotated.mp4", masks="masks.jsonl")
    print(summary.fps, summary.bottleneck())
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from .errors import StreamsegError  # noqa: E402

_LAZY = {"Config": "config", "load_config": "config", "Summary": "summary", "run": "pipeline",
         "run_config": "pipeline"}


def __getattr__(name: str) -> Any:
    # lazy, so that a worker process importing streamseg.runtime does not pay for torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'streamseg' has no attribute {name!r}")

__all__ = ["Config", "StreamsegError", "Summary", "__version__", "load_config", "run", "run_config"]
