"""The pipeline's stages, one module each, in data-flow order:
:mod:`.decode` -> :mod:`.batch` -> :mod:`.infer` -> :mod:`.track` (with tracking on) -> :mod:`.render`
-> :mod:`.encode`, with :mod:`.maskwriter` and :mod:`.publish` beside the encoder.

:data:`STAGES` is the table the planner builds workers from: a stage's constructor takes its config
section (the dataclass itself, when it has one) first, then the facts of the plan as keyword
arguments (which stream, which paths, the model's metadata), which are JSON values.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageType:
    """One kind of stage: where its class is, which config section it takes, its output ports."""

    name: str
    target: str
    """``module:Class``; imported only in the worker that runs it (the supervisor stays light)."""
    section: str | None
    """The :class:`~streamseg.config.Config` section its constructor takes first; None: none."""
    outputs: tuple[str, ...] = ()
    """Output ports, as the plan names them (render's ``frames`` becomes ``frames-J``, one per encoder,
    when it feeds several)."""

    def load(self) -> type:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    def build(self, config: Any, params: dict[str, Any]) -> Any:
        """A new stage object from its section (None without one) and the plan's facts."""
        cls = self.load()
        return cls(**params) if self.section is None else cls(config, **params)


STAGES: dict[str, StageType] = {kind.name: kind for kind in (
    StageType("decode", "streamseg.stages.decode:DecodeStage", "input", ("frames",)),
    StageType("batch", "streamseg.stages.batch:BatchStage", "batch", ("batches",)),
    StageType("infer", "streamseg.stages.infer:InferStage", "model", ("track", "render", "masks", "publish",
                                                                       "brokers")),
    StageType("track", "streamseg.stages.track:TrackStage", "track", ("render", "masks", "publish", "brokers")),
    StageType("render", "streamseg.stages.render:RenderStage", "render", ("frames",)),
    StageType("encode", "streamseg.stages.encode:EncodeStage", "encode"),
    StageType("masks", "streamseg.stages.maskwriter:MaskWriterStage", None),
    StageType("publish", "streamseg.stages.publish:PublishStage", None),
    StageType("brokers", "streamseg.stages.brokers:BrokerStage", None),
)}
"""Stage name -> :class:`StageType`, in data-flow order (also the summary's row order)."""
