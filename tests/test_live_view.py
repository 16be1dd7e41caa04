"""The live view in a real browser: Debian's chromium, headless, driven by selenium through
chromium-driver, on the page of a stream of a real ``streamseg serve``."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLI, read_jsonl
from test_service import Service

from streamseg.tools.synth import write_video

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser() -> Any:
    if not (CHROMIUM and DRIVER):
        if os.environ.get("STREAMSEG_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromium-driver are required here (.ci/run installs them)")
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _pixels(png: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.slow
def test_the_page_of_a_stream_plays_its_video_and_lists_its_detections(cli: CLI, tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    write_video(tmp_path / "scene.mp4", tmp_path / "gt.json", seed=7, frames=90)
    gt = json.loads((tmp_path / "gt.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    scene = {names[a["category_id"]] for a in gt["annotations"]}
    service = Service(cli, "--allow-dir", str(tmp_path), "--model", "streamseg-small")
    try:
        service.wait_ready()
        areas = {"zones": [{"name": "all", "points": [[0, 0], [320, 0], [320, 240], [0, 240]]}],
                 "lines": [{"name": "middle", "points": [[160, 0], [160, 240]]}]}
        assert service.call("POST", "/streams", {"source": str(tmp_path / "scene.mp4"), "id": "cam", "loop": True,
                                                 "masks": str(tmp_path / "cam.jsonl"), "analytics": areas})[0] == 201
        browser.get(service.url + "/")
        browser.find_element(By.LINK_TEXT, "cam").click()  # from the list of streams to the stream's page
        deadline = time.monotonic() + 60
        listed = ("return [document.getElementById('frame').textContent, [...document.querySelectorAll("
                  "'#detections li.detection')].map((e) => e.textContent), [...document.querySelectorAll("
                  "'#counts li.count')].map((e) => e.textContent)]")
        while not (shown := browser.execute_script(listed))[1]:  # read at once: the list is redrawn every frame
            assert time.monotonic() < deadline, "no detection was listed"
            time.sleep(0.2)
        frame, items, counts = int(shown[0]), shown[1], shown[2]
        # the stream's zones and lines, counted over that frame's tracks: all of them inside the frame
        assert counts[0] == f"zone all: {len(items)} inside, " + counts[0].split(", ")[1], counts
        assert counts[1].startswith("line middle: ") and counts[1].endswith(" out"), counts
        deadline = time.monotonic() + 30
        while not (written := [r for r in read_jsonl(tmp_path / "cam.jsonl") if r["frame"] == frame]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # the list is that frame's detections, as the masks file has them: class, score, track id
        page = sorted((c, int(tid[1:]), float(score)) for c, score, tid in (item.split() for item in items))
        masks = sorted((i["class"], i["track_id"], i["score"]) for i in written[0]["instances"])
        assert [p[:2] for p in page] == [m[:2] for m in masks]
        assert all(abs(p[2] - m[2]) <= 0.006 for p, m in zip(page, masks))
        assert len({item.split()[0] for item in items} & scene) >= 2, (items, scene)  # the scene's classes
        video = browser.find_element(By.ID, "video")
        assert browser.execute_script("return arguments[0].naturalWidth", video) == 320  # a picture arrived
        first = _pixels(video.screenshot_as_png)
        time.sleep(1.0)
        second = _pixels(video.screenshot_as_png)
        assert first.shape == second.shape and first.shape[0] > 100
        changed = np.abs(first.astype(int) - second.astype(int)).max(axis=2) > 30
        assert changed.mean() > 0.01, "the video did not move"  # the shapes moved in a second
        assert int(browser.find_element(By.ID, "frame").text) >= 0
    finally:
        assert service.stop() == 0

