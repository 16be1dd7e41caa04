"""A corpus of the video files users actually have, built with the ffmpeg program at test time, and
FFmpeg's own decode of each (frame count, timestamps, sizes, pixels) to check the decoder against.

``python tests/corpus.py DIR`` builds it into DIR and prints what FFmpeg makes of each file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from streamseg.stages.readers import DEINTERLACE_FILTER

FFMPEG = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
SIZE = (320, 240)
"""Width, height of most clips: not square, so that a turn shows in the size."""


def _lavfi(frames: int, rate: str = "25", size: tuple[int, int] = SIZE) -> list[str]:
    """A moving test pattern with a frame counter (testsrc2), so each frame differs from the next."""
    seconds = frames / Fraction(rate)
    return ["-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={rate}:duration={float(seconds)}"]


def _tone(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]


@dataclass(frozen=True)
class Case:
    """One file: how to make it, and what the decoder must do with it beyond matching FFmpeg."""

    name: str
    """File name (its extension picks the container)."""
    steps: tuple[tuple[str, ...], ...]
    """ffmpeg argument lists run in order; ``{src}``, ``{tmp}`` and ``{out}`` are file paths."""
    repaired: bool = False
    """Its timestamps go backwards or repeat: some are repaired, and the decoder says so."""
    rotation: int = 0
    """Degrees in its display matrix."""
    options: dict = field(default_factory=dict)
    """``input`` settings the case is decoded with."""
    stream: int = 0
    """The video stream that must be read (0 is the first)."""
    ffmpeg_options: tuple[str, ...] = ()
    """Options for FFmpeg's reference decode of the same file (a filter, no autorotation)."""


def _h264(frames: int, out: str = "{tmp}.mp4", *extra: str) -> tuple[str, ...]:
    """An H.264 clip of ``frames`` frames (to the temporary file: a later step makes the case of it)."""
    return (*_lavfi(frames), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, out)


CASES = (
    Case("mpeg4_bframes.avi", ((*_lavfi(50), "-c:v", "mpeg4", "-bf", "2", "-vtag", "XVID", "{out}"),)),
    # frames out of the decoder in presentation order with the pts of the packets in decode order:
    # 0, 80, 120, 40, 200, ... as AVI files with packed B-frames (DivX, XviD) give them
    Case("pts_out_of_order.mkv", ((*_lavfi(50), "-c:v", "mpeg4", "-bf", "2", "{tmp}.avi"),
                                  ("-i", "{tmp}.avi", "-c", "copy", "-bsf:v", "setts=pts=DTS", "{out}")),
         repaired=True),
    # an encoder that wrote some pts twice on a coarse clock: ..., 9001, 9002, 9000, 18001, ...
    Case("pts_repeated.mp4", ((*_lavfi(60, "30"), "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2",
                               "-video_track_timescale", "90000", "{tmp}.mp4"),
                              ("-i", "{tmp}.mp4", "-c", "copy", "-bsf:v",
                               r"setts=ts=if(eq(mod(N\,4)\,2)\,PREV_OUTPTS\,PTS)", "{out}")),
         repaired=True),
    Case("mjpeg.avi", ((*_lavfi(30), "-c:v", "mjpeg", "-q:v", "3", "{out}"),)),
    Case("mp3_audio.avi", ((*_lavfi(50), *_tone(2.0), "-c:v", "mpeg4", "-c:a", "libmp3lame", "-shortest", "{out}"),)),
    Case("hevc_10bit.mkv", ((*_lavfi(30), "-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                             "-x265-params", "log-level=error", "{out}"),)),
    Case("vp9.webm", ((*_lavfi(30), "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "{out}"),)),
    Case("av1.mp4", ((*_lavfi(30), "-c:v", "libsvtav1", "-preset", "12", "{out}"),)),
    Case("prores.mov", ((*_lavfi(20), "-c:v", "prores_ks", "-profile:v", "0", "{out}"),)),
    Case("mpeg2_interlaced.ts", ((*_lavfi(40), "-c:v", "mpeg2video", "-flags", "+ilme+ildct", "-top", "1",
                                  "-q:v", "4", "{out}"),)),
    Case("mpeg2_deinterlaced.ts", ((*_lavfi(40), "-c:v", "mpeg2video", "-flags", "+ilme+ildct", "-top", "1",
                                    "-q:v", "4", "{out}"),), options={"deinterlace": True},
         ffmpeg_options=("-vf", f"bwdif={DEINTERLACE_FILTER}")),
    # cut without re-encoding: the file keeps the frames before the cut point and an edit list hides them
    Case("edit_list.mp4", (_h264(75), ("-ss", "1.3", "-i", "{tmp}.mp4", "-c", "copy", "{out}")),),
    Case("edit_list_audio.mp4", ((*_lavfi(75), *_tone(3.0), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                                  "{tmp}.mp4"),
                                 ("-ss", "1.3", "-i", "{tmp}.mp4", "-c", "copy", "{out}"))),
    Case("cover_picture.mp4", (_h264(30),
                               ("-f", "lavfi", "-i", "color=c=red:size=64x64", "-frames:v", "1", "{tmp}.png"),
                               ("-i", "{tmp}.mp4", "-i", "{tmp}.png", "-map", "0", "-map", "1", "-c", "copy",
                                "-c:v:1", "png", "-disposition:v:1", "attached_pic", "{out}"))),
    # two video streams, the second marked default: it is the one read, unless input.video_stream says
    *(Case(name, ((*_lavfi(30), *_lavfi(30, size=(160, 120)), "-map", "0", "-map", "1", "-c:v", "libx264",
                   "-preset", "ultrafast", "-disposition:v:0", "0", "-disposition:v:1", "default", "{out}"),),
           options=options, stream=stream)
      for name, options, stream in (("default_video_stream.mkv", {}, 1),
                                    ("video_stream_0.mkv", {"video_stream": 0}, 0))),
    # a pause: frames 20 on are 2 s later than the frame rate says
    Case("timestamp_gap.mp4", (_h264(40, "{tmp}.mp4", "-video_track_timescale", "1000"),
                               ("-i", "{tmp}.mp4", "-c", "copy", "-bsf:v", "setts=ts=if(gte(N\\,20)\\,TS+2000\\,TS)",
                                "-video_track_timescale", "1000", "{out}"))),
    Case("far_first_pts.mp4", ((*_lavfi(30), "-c:v", "libx264", "-preset", "ultrafast", "-output_ts_offset", "3600",
                                "{out}"),)),
    # a phone's variable frame rate: 30 fps, then 15, then 30
    Case("variable_rate.mp4", ((*_lavfi(45, "30"), "-c:v", "libx264", "-preset", "ultrafast",
                                "-bsf:v", "setts=ts=if(lt(N\\,15)\\,N*3000\\,if(lt(N\\,30)\\,45000+(N-15)*6000\\,"
                                          "135000+(N-30)*3000))",
                                "-video_track_timescale", "90000", "{out}"),)),
    *(Case(f"rotated_{deg}.mp4", (_h264(30),
                                  ("-i", "{tmp}.mp4", "-c", "copy", "-metadata:s:v:0", f"rotate={deg}", "{out}")),
           rotation=deg) for deg in (90, 180, 270)),
    Case("rotated_kept.mp4", (_h264(30), ("-i", "{tmp}.mp4", "-c", "copy", "-metadata:s:v:0", "rotate=90", "{out}")),
         options={"autorotate": False}, ffmpeg_options=("-noautorotate",)),
    Case("odd_size.mp4", ((*_lavfi(30), "-vf", "scale=321:241", "-c:v", "libx264", "-preset", "ultrafast",
                           "-pix_fmt", "yuv444p", "{out}"),)),
)


def build(case: Case, folder: Path) -> Path:
    """Make ``case``'s file in ``folder`` (once); returns its path."""
    out = folder / case.name
    if out.exists():
        return out
    tmp = folder / f"{case.name}.tmp"
    for step in case.steps:
        args = [a.format(out=out, tmp=tmp, src=tmp) for a in step]
        done = subprocess.run([*FFMPEG, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"making {case.name}: ffmpeg {' '.join(args)}\n{done.stderr}")
    for leftover in folder.glob(f"{case.name}.tmp*"):
        leftover.unlink()
    return out


def ffprobe_frames(path: Path, stream: int = 0) -> list[dict]:
    """FFmpeg's decode of a video stream: each frame's best-effort timestamp, size and flags."""
    result = subprocess.run(["ffprobe", "-v", "error", "-select_streams", f"v:{stream}", "-show_entries",
                             "frame=best_effort_timestamp,pts,pkt_dts,width,height:stream=time_base",
                             "-of", "json", str(path)], check=True, capture_output=True, text=True, timeout=120)
    return json.loads(result.stdout)["frames"]


def ffmpeg_pictures(path: Path, case: Case, size: tuple[int, int]) -> np.ndarray:
    """Every frame FFmpeg decodes (and turns upright), RGB, ``uint8[N, H, W, 3]`` at ``size``."""
    before, after = (["-noautorotate"], []) if "-noautorotate" in case.ffmpeg_options else ([], case.ffmpeg_options)
    args = [*FFMPEG, *before, "-i", str(path), "-map", f"0:v:{case.stream}", *after,
            "-vsync", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(args, check=True, capture_output=True, timeout=120).stdout
    width, height = size
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    folder.mkdir(parents=True, exist_ok=True)
    assert shutil.which("ffmpeg"), "the ffmpeg program is needed"
    for case in CASES:
        path = build(case, folder)
        frames = ffprobe_frames(path, case.stream)
        print(f"{case.name:28s} {len(frames):3d} frames "
              f"{[f.get('best_effort_timestamp') for f in frames[:8]]}")


if __name__ == "__main__":
    main()
