"""The tracking benchmark's baseline: Roboflow's ByteTrack (``trackers`` 2.6.1) on the same detections
as streamseg's :class:`~streamseg.tracking.tracker.StreamTracker`, written out as masks JSONL records
with ``track_id``, so that :mod:`streamseg.tools.tracking_eval` scores both sides the same way.

ByteTrack associates by boxes only (Kalman-predicted box IoU); the masks pass through untouched, for
the scoring. Installing it without opencv-python (it would shadow our opencv-python-headless) and
without matplotlib (nothing on ByteTrack's path imports it)::

    pip install --no-deps trackers==2.6.1 supervision==0.31.2
    pip install pydeprecate==0.13.0 defusedxml==0.7.1 requests==2.34.2 rich==15.0.0
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from streamseg.config import TrackConfig

logger = logging.getLogger(__name__)


def bytetrack_records(records: list[dict[str, Any]], fps: float, high_score: float, *,
                      config: TrackConfig | None = None, backfill: bool = False) -> list[dict[str, Any]]:
    """ByteTrack's track ids for one stream's records (in frame order), as streamseg would write them.

    Every instance from ``config.low_score`` up is given to one ``ByteTrackTracker``, a frame at a time
    at the record's ``time`` (``frame / fps`` without one), frames without instances included (lost
    tracks age in them). The records returned hold what streamseg writes out, the instances at or above
    ``high_score``, each a copy of its input (mask included) with an integer ``track_id``: ByteTrack's
    id plus one (streamseg's ids start at 1).

    ByteTrack gives no id (its ``tracker_id`` -1) to a detection that starts a track, even with
    ``minimum_consecutive_frames`` 1: the track gets its id when it is matched again, in a later frame.
    streamseg writes every high-score detection with an id from its first frame, so such an instance
    gets a fresh id of its own, used nowhere else (a one-frame track); how often that happens is
    logged. ``backfill``: give it instead the id its track gets later, where it gets one (a look-ahead
    no online tracker has; it shows what the missing first ids cost).
    """
    import supervision as sv
    from trackers import ByteTrackTracker

    config = config or TrackConfig()
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    tracker = ByteTrackTracker(
        # ByteTrack counts its buffer in frames of a 30 fps video, scaled by frame_rate: 30 * max_age_s
        # keeps a lost track max_age_s seconds (ceil(max_age_s * fps) frames; with timestamps, by time)
        lost_track_buffer=round(30 * config.max_age_s), frame_rate=fps,
        # the model's score threshold splits the two stages, as streamseg's high_score does, and every
        # high-score detection left unmatched starts a track, as in streamseg
        high_conf_det_threshold=high_score, track_activation_threshold=high_score,
        # a track is confirmed at its first match, as soon as ByteTrack allows (see the docstring)
        minimum_consecutive_frames=1,
        # one box IoU for both stages: streamseg's first-stage mask IoU. low_match_iou (0.5, the second
        # stage's) has no counterpart; box IoU runs higher than mask IoU for the same pair of objects
        minimum_iou_threshold=config.match_iou,
    )
    out: list[dict[str, Any]] = []
    fresh: list[dict[str, Any]] = []  # high-score instances ByteTrack left without an id
    pending: list[tuple[Any, dict[str, Any]]] = []  # (a track not yet given an id, the instance that started it)
    last_id, last_time = 0, -np.inf
    for record in records:
        time_s = float(record.get("time", record["frame"] / fps))
        if time_s < last_time:  # ByteTrack would skip the frame; streamseg would end every track
            raise ValueError(f"frame {record['frame']} goes back in time: one pass of one stream, in order")
        last_time = time_s
        given = [inst for inst in record.get("instances", []) if inst["score"] >= config.low_score]
        # float64 scores: ByteTrack's thresholds then split them exactly as the filters here do
        dets = sv.Detections(xyxy=np.array([inst["box"] for inst in given], np.float64).reshape(-1, 4),
                             confidence=np.array([inst["score"] for inst in given], np.float64),
                             class_id=np.array([inst["class_id"] for inst in given], np.int64),
                             data={"det_idx": np.arange(len(given))})
        before = list(tracker.tracks)  # held, so that no new track can have the id() of one pruned now
        result = tracker.update(dets, timestamp=time_s)
        ids = np.full(len(given), -1, np.int64)
        if len(result):  # ByteTrack returns the detections reordered: det_idx puts them back
            ids[result.data["det_idx"]] = result.tracker_id
            last_id = max(last_id, int(result.tracker_id.max()) + 1)
        keep = [k for k, inst in enumerate(given) if inst["score"] >= high_score]
        written = [dict(given[k], track_id=int(ids[k]) + 1 if ids[k] >= 0 else None) for k in keep]
        out.append({**record, "instances": written})
        untracked = [inst for inst in written if inst["track_id"] is None]
        fresh += untracked
        if backfill:
            for track, inst in pending:
                if track.tracker_id != -1:
                    inst["track_id"] = track.tracker_id + 1
            alive = {id(track) for track in tracker.tracks}
            pending = [(t, inst) for t, inst in pending if t.tracker_id == -1 and id(t) in alive]
            # ByteTrack appends a frame's new tracks in the order of their detections, as `untracked` is
            known = {id(track) for track in before}
            started = [track for track in tracker.tracks if id(track) not in known]
            assert len(started) == len(untracked), (len(started), len(untracked))
            pending += list(zip(started, untracked))
    alone = [inst for inst in fresh if inst["track_id"] is None]
    for k, inst in enumerate(alone):  # after every id ByteTrack gave, so that none is shared
        inst["track_id"] = last_id + 1 + k
    logger.info("ByteTrack left %d of %d high-score instances without an id; %d then got their track's id "
                "(backfill), %d a fresh one", len(fresh), sum(len(r["instances"]) for r in out),
                len(fresh) - len(alone), len(alone))
    return out
