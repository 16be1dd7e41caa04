"""Churn: streams added and removed again and again in a running ``streamseg serve``; nothing may be
left behind, nothing may grow, and the streams that stay lose nothing.

Eight streams: ``stay-0`` and ``stay-1`` (looping files) stay the whole run; four looping files and
two live RTSP feeds (GStreamer's server, ``tests/rtsp_server.py``) are removed (``DELETE``) and added
again (``POST``, the same id, new output files) in turn, ``--cycles`` times over ``--minutes``. Every
``--sample-s`` the RSS and open file descriptors of the service and of each lasting worker are read
from ``/proc``, with the worker processes and ``/dev/shm`` slots. Figures:

- left behind after the service stopped: processes, shared-memory slots (none may be);
- during the run: worker processes beyond the lasting stages and one decoder per stream, file
  descriptors and RSS of each lasting process at the end as a ratio of its value after warm-up
  (the median over ``--warmup-s`` .. ``2 * --warmup-s``; the end: the median of the last three);
- the outputs: every removed file stream's video plays and holds its masks file's frames, each
  once, from 0; the streams that stayed hold every frame from 0, once, in order;
- how long adding and removing a stream took (the API's answers).

    python benchmarks/churn.py [--minutes 5] [--cycles 50] [--model streamseg-small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
from common import free_port, make_clip, start_rtsp_server, workers

ROOT = Path(__file__).resolve().parent.parent


def call(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def children(root: int | None) -> list[int]:
    """The worker processes of the service now (each decoder is one of them); None: any streamseg
    worker on this machine (once the service is gone, a worker it left would have another parent)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if stat and "(sseg-" in stat and (root is None or int(stat.rsplit(")", 1)[1].split()[1]) == root):
            found.append(int(entry))
    return found


def frames_of(masks: Path) -> list[int]:
    with open(masks) as f:
        return [json.loads(line)["frame"] for line in f if line.strip()]


def video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="churn-"))
    clip = tmp / "clip.mp4"
    make_clip(clip, frames=90, width=320, height=240)
    rtsp = [(port, start_rtsp_server(clip, port)) for port in (free_port(), free_port())]
    started = time.monotonic()
    try:
        run(args, tmp, clip, rtsp, started)
    finally:
        for _, proc in rtsp:
            proc.kill()


def run(args: argparse.Namespace, tmp: Path, clip: Path, rtsp: list, started: float) -> None:
    service = subprocess.Popen([sys.executable, "-m", "streamseg", "serve", "--http", "127.0.0.1:0", "--model",
                                args.model, "--allow-dir", str(tmp), "--set", "input.reconnect_attempts=0"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        measure(args, tmp, clip, rtsp, started, service)
    finally:
        if service.poll() is None:
            service.kill()


def measure(args: argparse.Namespace, tmp: Path, clip: Path, rtsp: list, started: float,
            service: subprocess.Popen[str]) -> None:
    assert service.stderr is not None
    line = service.stderr.readline()
    if "serving at" not in line:
        sys.exit(f"the service did not start: {line}{service.stderr.read()}")
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(service.stderr), daemon=True).start()
    url = line.split("serving at ")[1].split()[0].rstrip("/")
    while call(url + "/readyz")[0] != 200:
        time.sleep(0.2)
    ready_s = time.monotonic() - started
    sources = {"stay-0": str(clip), "stay-1": str(clip), **{f"file-{i}": str(clip) for i in range(4)},
               **{f"rtsp-{i}": f"rtsp://127.0.0.1:{port}/cam" for i, (port, _) in enumerate(rtsp)}}
    churned = [sid for sid in sources if not sid.startswith("stay")]
    generation = dict.fromkeys(sources, 0)

    def add(sid: str) -> float:
        body = {"source": sources[sid], "id": sid, "masks": str(tmp / f"{sid}-{generation[sid]}.jsonl")}
        if not sid.startswith("rtsp"):
            body["loop"] = True
        if sid.startswith(("stay-0", "file")):
            body["output"] = str(tmp / f"{sid}-{generation[sid]}.mp4")
        t = time.monotonic()
        status, answer = call(url + "/streams", "POST", body)
        if status != 201:
            sys.exit(f"adding {sid}: {status} {answer}")
        return time.monotonic() - t

    adds = [add(sid) for sid in sources]
    removes: list[float] = []
    lasting = {name: pid for name, pid in workers(service.pid).items() if not name.startswith("decode")}
    samples: list[tuple[float, dict[str, int | None], dict[str, int | None], int, int]] = []
    every = args.minutes * 60 / args.cycles
    t0 = time.monotonic()
    for cycle in range(args.cycles):
        while time.monotonic() < t0 + cycle * every:
            time.sleep(0.2)
        sid = churned[cycle % len(churned)]
        t = time.monotonic()
        status, answer = call(f"{url}/streams/{sid}", "DELETE")
        if status != 200:
            sys.exit(f"removing {sid}: {status} {answer}")
        removes.append(time.monotonic() - t)
        generation[sid] += 1
        adds.append(add(sid))
        now = time.monotonic() - t0
        if not samples or now - samples[-1][0] >= args.sample_s:
            shm = len(list(Path("/dev/shm").glob("sseg-*")))
            samples.append((now, {n: rss_kib(p) for n, p in lasting.items()}, {n: fds(p) for n, p in lasting.items()},
                            len(children(service.pid)), shm))
    listing = call(url + "/streams")[1]
    service.send_signal(signal.SIGTERM)
    code = service.wait(120)
    time.sleep(2)
    left = children(None)
    shm_left = sorted(str(p) for p in Path("/dev/shm").glob("sseg-*"))

    def ratio(index: int, name: str) -> tuple[float, float, float]:
        warm = [s[index][name] for s in samples if args.warmup_s <= s[0] <= 2 * args.warmup_s and s[index][name]]
        end = [s[index][name] for s in samples[-3:] if s[index][name]]
        base, last = statistics.median(warm), statistics.median(end)
        return base, last, last / base

    print(f"# churn: {len(sources)} streams, {args.cycles} removals and additions over {args.minutes:g} min, "
          f"{args.model}, {platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"service ready in {ready_s:.1f} s; exit code {code} after SIGTERM; streams at the end: "
          f"{[s['id'] + ':' + s['state'] for s in listing]}")
    print(f"left behind: processes {left}, shared-memory slots {shm_left}")
    print(f"worker processes during the run: {min(s[3] for s in samples)} to {max(s[3] for s in samples)} "
          f"(the {len(lasting) - 1} lasting stages and one decoder per stream: {len(lasting) - 1 + len(sources)}); "
          f"/dev/shm slots: {min(s[4] for s in samples)} to {max(s[4] for s in samples)}")
    print("| process | RSS after warm-up MiB | RSS at the end MiB | ratio | fds after warm-up | fds at the end |")
    print("|---|---|---|---|---|---|")
    for name in lasting:
        base, last, r = ratio(1, name)
        fbase, flast, _ = ratio(2, name)
        print(f"| {name} | {base / 1024:.1f} | {last / 1024:.1f} | {r:.3f} | {fbase:.0f} | {flast:.0f} |")
    print(f"add: p50 {statistics.median(adds):.2f} s, max {max(adds):.2f} s ({len(adds)}); remove: p50 "
          f"{statistics.median(removes):.2f} s, max {max(removes):.2f} s ({len(removes)})")
    broken = []
    for sid in sources:
        for g in range(generation[sid] + 1):
            masks = tmp / f"{sid}-{g}.jsonl"
            frames = frames_of(masks)
            if not sid.startswith("rtsp") and frames != list(range(len(frames))):
                broken.append(f"{masks.name}: frames not 0..n-1")
            video = tmp / f"{sid}-{g}.mp4"
            if video.exists() and video_frames(video) != len(frames):
                broken.append(f"{video.name}: {video_frames(video)} frames, masks {len(frames)}")
    stays = {sid: len(frames_of(tmp / f"{sid}-0.jsonl")) for sid in ("stay-0", "stay-1")}
    print(f"outputs checked: {sum(g + 1 for g in generation.values())} masks files; broken: {broken or 'none'}; "
          f"frames of the streams that stayed: {stays}")
    print("".join(log[-5:]), end="")


if __name__ == "__main__":
    main()
