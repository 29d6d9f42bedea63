"""End to end in a real headless browser: `fusion-edge camera` runs as a subprocess on a
tiny ONNX bundle with a generated video file as the camera; Debian's chromium, driven by
Playwright, loads the page, watches the live view update, asks a typed question and sees
the answer stream in, queues a second one, freezes the frame, runs watch mode, is refused
with a wrong token, and takes screenshots (pytest's tmp dir, and $FUSION_EDGE_ARTIFACTS).

Skipped only when chromium or playwright is missing: scripts/install_browser.sh installs
both (apt chromium + pip playwright; no browser download).
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("cv2", reason="opencv-python-headless (the 'camera' extra) is not installed")
pytest.importorskip("fastapi", reason="fastapi (the 'camera' extra) is not installed")
pytest.importorskip("uvicorn", reason="uvicorn (the 'camera' extra) is not installed")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright for Python is not installed (run scripts/install_browser.sh)")

# one xdist worker: its module fixtures start the camera app and chromium once
pytestmark = pytest.mark.xdist_group("test_camera_browser")
CHROMIUM = os.environ.get("FUSION_EDGE_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"chromium is not installed at {CHROMIUM} (run scripts/install_browser.sh)", allow_module_level=True)

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "browser-test-token"
WAIT_MS = 120_000                     # the CI machine has 2 shared cores


def read_ready_url(proc, timeout=120.0) -> str:
    """The URL from the app's 'camera QA ready: open URL' line (bounded wait)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if "camera QA ready: open " in line:
            return line.split("open ", 1)[1].strip()
    proc.kill()
    raise AssertionError(f"the app did not start: {proc.stderr.read()[-2000:]}")


class App:
    """`python -m fusion_edge.cli camera …` as a subprocess on 127.0.0.1 and a free port."""

    def __init__(self, bundle, source, *extra):
        cmd = [sys.executable, "-m", "fusion_edge.cli", "camera", str(bundle), "--source", str(source),
               "--host", "127.0.0.1", "--port", "0", "--max-new-tokens", "4", "--max-fps", "8", "--device", "cpu",
               *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url = read_ready_url(self.proc)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def app_url(bundle, tmp_path_factory):
    from fusion_edge.apps.camera_qa.demo import write_demo_video
    clip = write_demo_video(tmp_path_factory.mktemp("browser") / "clip.avi", frames=40, fps=10)
    app = App(bundle, clip, "--token", TOKEN)
    try:
        assert app.url.startswith("http://127.0.0.1:") and app.url.endswith(f"?token={TOKEN}")
        yield app.url
    finally:
        app.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, app_url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    p = ctx.new_page()
    p.set_default_timeout(WAIT_MS)
    p.errors = []
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    p.goto(app_url)
    yield p
    ctx.close()


def screenshot(p, tmp_path, name) -> Path:
    out = tmp_path / name
    p.screenshot(path=str(out), full_page=True)
    if os.environ.get("FUSION_EDGE_ARTIFACTS"):
        dest = Path(os.environ["FUSION_EDGE_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, dest / name)
    assert out.stat().st_size > 10_000
    return out


def seq(p) -> int:
    return int(p.get_attribute("#live", "data-seq") or 0)


@pytest.mark.slow
def test_page_loads_and_the_live_view_updates(page):
    assert page.title() == "FUSION · camera QA"
    assert "token=" not in page.url                        # kept out of the address bar
    page.wait_for_function("Number(document.getElementById('live').dataset.seq) > 0")
    first = seq(page)
    page.wait_for_function(f"Number(document.getElementById('live').dataset.seq) > {first + 3}")
    assert page.inner_text("#view-badge") == "LIVE"
    page.wait_for_selector("#source-pill.ok")
    assert "clip.avi" in page.inner_text("#source-pill")
    assert page.inner_text("#model-pill") == "onnx-fp32 · vision cpu · align cpu · llm cpu"
    # naturalWidth is 0 while the view's next frame loads (it replaces its image several times a
    # second): read it once a frame is shown
    assert page.wait_for_function("document.getElementById('live').naturalWidth").json_value() == 320


def test_freeze_frame_stops_the_view_and_resumes(page):
    page.click("#freeze")
    page.wait_for_function("document.getElementById('view-badge').textContent === 'FROZEN'")
    time.sleep(0.3)
    frozen = seq(page)
    time.sleep(1.0)
    assert seq(page) == frozen and page.get_attribute("#freeze", "aria-pressed") == "true"
    page.click("#freeze")
    page.wait_for_function("document.getElementById('view-badge').textContent === 'LIVE'")
    page.wait_for_function(f"Number(document.getElementById('live').dataset.seq) > {frozen}")


@pytest.mark.slow
def test_typed_question_streams_an_answer(page):
    page.evaluate("""() => {
      window.__partial = [];
      const list = document.getElementById('answers');
      new MutationObserver(() => {
        const card = list.querySelector('.answer');
        if (card) window.__partial.push([card.className, card.querySelector('.a').textContent]);
      }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    page.fill("#question", "What is in front of the camera?")
    page.press("#question", "Enter")
    card = page.wait_for_selector("#answers .answer")
    assert card.query_selector(".q").inner_text() == "What is in front of the camera?"
    assert card.query_selector(".thumb").get_attribute("src").startswith("data:image/jpeg;base64,")
    page.wait_for_selector("#answers .answer.done")
    final = card.query_selector(".a").text_content()
    partial = page.evaluate("window.__partial")
    streamed = [text for cls, text in partial if "running" in cls and text]
    assert final and streamed, "no text was shown while the answer was running"
    assert all(final.startswith(t) for t in streamed)
    stats = card.query_selector(".stats").inner_text()
    assert all(word in stats for word in ("vision", "prefill", "decode", "tok/s"))
    assert page.input_value("#question") == ""


def test_a_question_asked_while_busy_is_shown_as_waiting(page):
    done = page.evaluate("document.querySelectorAll('#answers .answer.done').length")   # earlier tests' answers
    page.fill("#question", "First of two?")
    page.press("#question", "Enter")
    page.fill("#question", "Second of two?")
    page.press("#question", "Enter")
    page.wait_for_selector("#queue-note:not(.hidden)")
    assert "waiting" in page.inner_text("#queue-note")
    assert page.locator("#answers .answer.queued .q").inner_text() == "Second of two?"
    page.wait_for_function(f"document.querySelectorAll('#answers .answer.done').length >= {done + 2}")
    page.wait_for_selector("#queue-note.hidden", state="attached")


@pytest.mark.slow
def test_watch_mode_produces_answers(page, tmp_path):
    page.fill("#watch-question", "Is anything moving?")
    page.select_option("#watch-interval", "2")
    page.click("#watch-btn")
    page.wait_for_function("document.getElementById('watch-btn').textContent === 'Stop watching'")
    assert page.inner_text("#watch-state") == "every 2 s"
    page.wait_for_function("document.querySelectorAll('#watch-list .answer.done').length >= 2")
    shot = screenshot(page, tmp_path, "camera_qa_desktop.png")
    page.click("#watch-btn")
    page.wait_for_function("document.getElementById('watch-btn').textContent === 'Start watching'")
    assert page.errors == [] and shot.exists()


def test_phone_layout_fits_the_screen(page, tmp_path):
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    view = page.locator("#viewer").bounding_box()
    answers = page.locator("#answers-card").bounding_box()
    assert view["width"] > 340 and answers["y"] > view["y"] + view["height"]     # one column
    screenshot(page, tmp_path, "camera_qa_phone.png")
    page.set_viewport_size({"width": 1280, "height": 800})


def test_wrong_token_is_refused(browser, app_url):
    ctx = browser.new_context()
    try:
        p = ctx.new_page()
        base = app_url.split("?", 1)[0]
        for url in (base + "?token=wrong", base):
            resp = p.goto(url)
            assert resp.status == 401
            assert "access token missing or wrong" in p.inner_text("#refused")
        assert p.evaluate("fetch('api/state').then(r => r.status)") == 401
    finally:
        ctx.close()


@pytest.mark.slow
def test_a_missing_source_is_reported_and_picked_up_when_it_appears(browser, bundle, tmp_path):
    from PIL import Image
    folder = tmp_path / "drop"
    folder.mkdir()
    app = App(bundle, folder, "--slide-seconds", "0.5")
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    try:
        p = ctx.new_page()
        p.set_default_timeout(WAIT_MS)
        p.goto(app.url)
        p.wait_for_selector("#source-pill.bad")
        assert "has no images" in p.inner_text("#source-pill") and "retry in" in p.inner_text("#source-pill")
        p.wait_for_selector("#view-overlay:not(.hidden)")
        assert "has no images" in p.inner_text("#overlay-text")
        p.fill("#question", "Anything?")
        p.press("#question", "Enter")
        p.wait_for_selector("#toast:not(.hidden)")
        assert "no frame from folder drop yet" in p.inner_text("#toast")
        Image.new("RGB", (200, 150), (30, 160, 90)).save(folder / "first.png")
        p.wait_for_selector("#source-pill.ok")
        p.wait_for_function("Number(document.getElementById('live').dataset.seq) > 0")
        p.wait_for_selector("#view-overlay.hidden", state="attached")
        screenshot(p, tmp_path, "camera_qa_source_back.png")
    finally:
        ctx.close()
        app.stop()
