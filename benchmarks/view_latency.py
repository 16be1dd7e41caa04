"""Glass-to-glass latency of the live view: from a frame's capture to the browser showing it.

A clip of held-out synthetic scenes carries each frame's number as a strip of black and white
blocks below the picture. ``streamseg serve`` reads it as a live source (``input.live: true``: paced
at its frame rate, each frame stamped with its capture time), and Debian's chromium, headless,
shows the stream's page. Each screenshot of the video is read back: the strip gives the number
``n`` of the frame on screen, and ``n``'s capture time follows from one frame whose capture time
the page's own updates (server-sent events) say, since a paced source captures one frame every
``1/fps`` seconds. The latency of a screenshot is the time it was taken minus that capture time:
the decoder's queue, the model, drawing and JPEG, the HTTP stream, the browser's decode and paint,
and the screenshot itself. The bits are stripes (vertical: one, horizontal: zero), a texture rather
than a shape, but the model still finds shapes in the strip at times and draws over it: such
screenshots cannot be read, and are counted.

    python benchmarks/view_latency.py [--shots 30] [--model streamseg-small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import cv2
import numpy as np

from streamseg.tools.synth import Scene

ROOT = Path(__file__).resolve().parent.parent
BITS, BLOCK, STRIP = 12, 24, 24
"""The frame number's bits, each a block this many pixels wide, in a strip this high."""
FPS = 30


def write_clip(path: Path, frames: int, seed: int) -> None:
    """Moving shapes of held-out scene ``seed``, 320x240, with the frame number in a strip below."""
    scene = Scene(seed, 320, 240)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240 + STRIP, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "30"}
        for i, (picture, _) in enumerate(scene.frames(frames)):
            strip = np.empty((STRIP, 320, 3), np.uint8)
            for bit in range(BITS):  # a one: vertical stripes; a zero: horizontal ones (texture, not a shape)
                block = strip[:, bit * BLOCK:(bit + 1) * BLOCK]
                stripes = (np.arange(BLOCK) // 2 % 2)[None, :] if i >> bit & 1 else (np.arange(STRIP) // 2 % 2)[:, None]
                block[:] = (90 + 80 * np.broadcast_to(stripes, block.shape[:2]))[..., None]
            strip[:, BITS * BLOCK:] = 130
            frame = av.VideoFrame.from_ndarray(np.vstack([picture, strip]), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def read_number(image: np.ndarray) -> int | None:
    """The frame number in a screenshot of the video (BGR, scaled to any size); None when unreadable."""
    h, w = image.shape[:2]
    gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (320, 240 + STRIP)).astype(float)[240 + 4:-4]
    number = 0
    for bit in range(BITS):
        block = gray[:, bit * BLOCK + 4:(bit + 1) * BLOCK - 4]
        across, down = np.abs(np.diff(block, axis=1)).mean(), np.abs(np.diff(block, axis=0)).mean()
        if max(across, down) < 2 * min(across, down) + 5:
            return None  # neither: drawn over, or caught between two frames
        number |= (across > down) << bit
    return number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=30)
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By

    tmp = Path(tempfile.mkdtemp(prefix="view-latency-"))
    clip = tmp / "clip.mp4"
    write_clip(clip, 1800, args.seed)  # a minute: no loop (a loop restarts the numbers)
    service = subprocess.Popen([sys.executable, "-m", "streamseg", "serve", "--http", "127.0.0.1:0", "--model",
                                args.model, "--allow-dir", str(tmp), "--set", "input.live=true"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,700"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=options)
    try:
        assert service.stderr is not None
        line = service.stderr.readline()
        url = line.split("serving at ")[1].split()[0].rstrip("/")
        while True:
            try:
                urllib.request.urlopen(url + "/readyz", timeout=10)
                break
            except urllib.error.HTTPError:  # 503 while the stages start
                time.sleep(0.2)
        body = json.dumps({"source": str(clip), "id": "cam", "masks": str(tmp / "cam.jsonl")}).encode()
        urllib.request.urlopen(urllib.request.Request(url + "/streams", data=body, method="POST",
                                                      headers={"Content-Type": "application/json"}), timeout=60)
        with urllib.request.urlopen(url + "/streams/cam/events", timeout=30) as events:
            while not (line := events.readline()).startswith(b"data: "):
                pass
        first = json.loads(line[6:])
        origin = first["captured"] - first["frame"] / FPS  # a paced source: frame n captured at origin + n/fps
        browser.get(url + "/streams/cam/view")
        video = browser.find_element(By.ID, "video")
        while not browser.execute_script("return arguments[0].naturalWidth", video):
            time.sleep(0.1)
        time.sleep(2.0)
        latencies, unread = [], 0
        for _ in range(args.shots):
            before = time.time()
            png = video.screenshot_as_png
            taken = (before + time.time()) / 2
            number = read_number(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))
            latency = None if number is None else taken - (origin + number / FPS)
            if latency is None or not 0 < latency < 10:  # drawn over (the model finds shapes in the strip too)
                unread += 1
            else:
                latencies.append(latency)
            time.sleep(0.3)
    finally:
        browser.quit()
        service.send_signal(signal.SIGTERM)
        service.wait(60)
    print(f"# live view glass-to-glass latency, {args.model}, 320x{240 + STRIP} at {FPS} fps read as live, "
          f"serve.view_fps 10, headless chromium {browser.capabilities.get('browserVersion', '?')}, "
          f"{platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"screenshots read: {len(latencies)} of {args.shots} ({unread} with the strip drawn over or caught "
          "between two frames)")
    if latencies:
        print(f"latency: p50 {statistics.median(latencies) * 1000:.0f} ms, min {min(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
