"""The camera app at the HTTP / web-socket level: the real app object serving a real
Pipeline (tiny ONNX bundle) over uvicorn on 127.0.0.1, a generated video file as the
camera, httpx for HTTP and a web-socket client for the live protocol.

Covers: streamed answers equal to a direct Pipeline run, the scene cache on a frozen
frame, the depth-1 queue, cancelling (running and queued), watch mode, question / upload
limits, the access token, Host / Origin checks, readable errors, the JSON-lines log and the
headless `--no-browser` mode of the CLI.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

pytest.importorskip("cv2", reason="opencv-python-headless (the 'camera' extra) is not installed")
pytest.importorskip("fastapi", reason="fastapi (the 'camera' extra) is not installed")
pytest.importorskip("uvicorn", reason="uvicorn (the 'camera' extra) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")
ws_client = pytest.importorskip("websockets.sync.client", reason="websockets is not installed")
from websockets.exceptions import InvalidStatus  # noqa: E402
from conftest import wait_for  # noqa: E402

from fusion_edge.apps.camera_qa.app import CameraApp, Settings  # noqa: E402
from fusion_edge.apps.camera_qa.demo import write_demo_video  # noqa: E402
from fusion_edge.apps.camera_qa.server import make_server  # noqa: E402
from fusion_edge.apps.camera_qa.sources import parse_source  # noqa: E402
from fusion_edge.runtime.errors import PromptError, SourceError  # noqa: E402
from fusion_edge.runtime.pipeline import Pipeline  # noqa: E402

# one xdist worker: its module fixtures start the camera app and its server once
pytestmark = pytest.mark.xdist_group("test_camera_app")

CAP_TOKENS = 40           # the app's limit; normal questions ask for SHORT tokens
SHORT = 3
MAX_Q = 200
MAX_UPLOAD = 300_000
WAIT = 120                # seconds: generous, the CI machine has 2 shared cores


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_demo_video(tmp_path_factory.mktemp("camera") / "clip.avi", frames=30, fps=10)


@pytest.fixture(scope="module")
def cam(bundle, clip):
    pipe = Pipeline.open(bundle, device="cpu")
    app = CameraApp(pipe, parse_source(str(clip)),
                    Settings(max_new_tokens=CAP_TOKENS, max_fps=5, max_question_chars=MAX_Q,
                             max_upload_bytes=MAX_UPLOAD)).start()
    yield app
    app.stop()


class LiveServer:
    """uvicorn serving `make_server`'s app in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, cam, token=None, host="127.0.0.1"):
        self.server, sock, self.url = make_server(cam, host, 0, token)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 60             # seconds; under pytest-xdist the other worker shares the cores
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        self.ws_url = self.url.replace("http://", "ws://") + "ws"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def live(cam):
    srv = LiveServer(cam)
    yield srv
    srv.stop()


@pytest.fixture
def http(live):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


@pytest.fixture
def reset(cam):
    """Leave the shared app as found: not frozen, not watching, worker idle."""
    yield
    cam.set_watch(False)
    cam.freeze(False)
    assert wait_for(lambda: cam.worker.idle, WAIT)


class Socket:
    """A web-socket client with bounded waits; `seen` keeps every event received."""

    def __init__(self, url, **kw):
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(ws_client.connect(url, open_timeout=20, **kw))
        self.seen: list[dict] = []
        self.state = self.next("state")["state"]

    def send(self, **msg):
        self.ws.send(json.dumps(msg))

    def next(self, type_=None, timeout=WAIT, **match):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            assert left > 0, f"no {type_} {match} event within {timeout} s; saw {[e['type'] for e in self.seen]}"
            event = json.loads(self.ws.recv(timeout=left))
            self.seen.append(event)
            if (type_ is None or event["type"] == type_) and all(_get(event, k) == v for k, v in match.items()):
                return event

    def ask(self, question, **kw):
        """Ask; → the job event of this question (running or queued)."""
        self.send(type="ask", question=question, **kw)
        return self.next("job", **{"job.question": question})["job"]

    def answer(self, job_id):
        """→ (end job, text streamed as token events)."""
        end = self.next("end", **{"job.id": job_id})["job"]
        streamed = "".join(e["text"] for e in self.seen if e["type"] == "token" and e["id"] == job_id)
        return end, streamed

    def close(self):
        self._stack.close()


def _get(event, dotted):
    for part in dotted.split("."):
        event = event.get(part) if isinstance(event, dict) else None
    return event


@pytest.fixture
def sock(live):
    s = Socket(live.ws_url)
    yield s
    s.close()


def upload(http, path, ctype="image/jpeg"):
    return http.post("/api/upload", content=path.read_bytes(), headers={"content-type": ctype})


def expected_answer(pipe, image_path, question, n):
    return pipe.ask(pipe.look(image_path), question, max_new_tokens=n)


# ---- page, frames, state -------------------------------------------------------------------------
def test_page_static_files_and_state(http):
    page = http.get("/")
    assert page.status_code == 200 and 'id="question"' in page.text and "static/app.js" in page.text
    for name in ("app.js", "app.css", "favicon.svg"):
        assert http.get(f"/static/{name}").status_code == 200
    st = http.get("/api/state").json()
    model = st["model"]                           # the session bundle is exported with --no-verify
    assert {k: model[k] for k in ("backend", "device", "verification", "devices")} == \
        {"backend": "onnx-fp32", "device": "cpu", "verification": "skipped",
         "devices": {"vision": "cpu", "align": "cpu", "llm": "cpu"}}
    assert "exported with --no-verify" in model["warning"] and model["tf32_parts"] == []
    assert 'id="verify-warning"' in page.text
    assert st["limits"]["max_question_chars"] == MAX_Q and st["source"]["label"] == "clip.avi"


def test_frame_endpoint_serves_the_newest_frame_as_jpeg(http, cam):
    from io import BytesIO

    from PIL import Image
    assert wait_for(lambda: cam.capture.latest() is not None, 30)
    r = http.get("/api/frame.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(r.content)).size == (320, 240)
    key = r.headers["x-frame-key"]
    r2 = http.get("/api/frame.jpg", params={"after": key})   # waits for a newer frame (video plays at 5 fps)
    assert r2.status_code == 200 and r2.headers["x-frame-key"] != key
    assert int(r2.headers["x-frame-seq"]) > int(r.headers["x-frame-seq"])


# ---- answers ------------------------------------------------------------------------------------------
def test_streamed_answer_about_an_uploaded_photo_equals_the_pipeline(http, sock, cam, pipe, images, reset):
    r = upload(http, images["wide"])
    assert r.status_code == 200 and r.json()["origin"] == "upload" and r.json()["width"] == 640
    sock.next("freeze", **{"freeze.origin": "upload"})
    job = sock.ask("What is on the table?", max_new_tokens=SHORT)
    assert job["state"] == "running" and job["frame"]["origin"] == "upload"
    assert job["thumb"].startswith("data:image/jpeg;base64,")
    end, streamed = sock.answer(job["id"])
    assert end["state"] == "done" and end["text"] == streamed
    assert end["text"] == expected_answer(pipe, images["wide"], "What is on the table?", SHORT)
    st = end["stats"]
    assert st["new_tokens"] == SHORT and st["prefill_s"] > 0 and st["vision_s"] > 0 and st["decode_s"] >= 0
    assert {"tokens_per_s", "ttft_s", "scene_cached", "total_s"} <= set(st)


def test_frozen_frame_runs_look_once_and_reuses_the_scene(sock, cam, reset):
    assert wait_for(lambda: cam.capture.latest() is not None, 30)
    sock.send(type="freeze", on=True)
    frozen = sock.next("freeze")["freeze"]
    assert frozen["on"] and frozen["origin"] == "camera"
    looks = cam.worker.looks
    first = sock.ask("How many boxes?", max_new_tokens=SHORT)
    end1, _ = sock.answer(first["id"])
    second = sock.ask("What colour is the box?", max_new_tokens=SHORT)
    end2, _ = sock.answer(second["id"])
    assert first["frame"]["key"] == second["frame"]["key"] == frozen["key"]
    assert cam.worker.looks == looks + 1
    assert end1["stats"]["scene_cached"] is False and end1["stats"]["look_s"] > 0
    assert end2["stats"]["scene_cached"] is True and end2["stats"]["look_s"] == 0


def test_live_questions_use_the_newest_frame(sock, cam, reset):
    a = sock.ask("What moves?", max_new_tokens=1)
    sock.answer(a["id"])
    b = sock.ask("What moves now?", max_new_tokens=1)
    sock.answer(b["id"])
    assert a["frame"]["origin"] == "camera" and b["frame"]["seq"] > a["frame"]["seq"]


def test_second_question_waits_third_is_refused(sock, cam, reset):
    first = sock.ask("First question?", max_new_tokens=SHORT)
    second = sock.ask("Second question?", max_new_tokens=SHORT)
    assert first["state"] == "running" and second["state"] == "queued"
    sock.send(type="ask", question="Third question?")
    refused = sock.next("error")
    assert refused["request"] == "ask" and "already waiting" in refused["message"] and refused["fix"]
    end1, _ = sock.answer(first["id"])
    promoted = sock.next("job", **{"job.id": second["id"], "job.state": "running"})
    end2, _ = sock.answer(second["id"])
    assert end1["state"] == end2["state"] == "done"
    order = [(e["type"], (e.get("job") or {}).get("id")) for e in sock.seen if e["type"] in ("job", "end")]
    second_events = [i for i, x in enumerate(order) if x == ("job", second["id"])]      # queued, then running
    assert len(second_events) == 2 and second_events[0] < order.index(("end", first["id"])) < second_events[1]
    assert promoted["job"]["state"] == "running"
    assert not any(e["type"] == "job" and e["job"]["question"] == "Third question?" for e in sock.seen)


def test_cancel_stops_between_tokens_and_the_next_answer_is_right(http, sock, cam, pipe, images, reset):
    assert upload(http, images["tall"]).status_code == 200
    job = sock.ask("Describe everything in detail.")                  # up to CAP_TOKENS tokens
    first_token = sock.next("token", id=job["id"])
    sock.send(type="cancel", id=job["id"])
    end, streamed = sock.answer(job["id"])
    assert first_token["text"] and end["state"] == "cancelled"
    assert end["text"] == streamed and 1 <= end["stats"]["new_tokens"] < CAP_TOKENS
    again = sock.ask("Describe everything in detail.", max_new_tokens=SHORT)
    end2, _ = sock.answer(again["id"])
    assert end2["state"] == "done" and end2["stats"]["scene_cached"] is True
    assert end2["text"] == expected_answer(pipe, images["tall"], "Describe everything in detail.", SHORT)


def test_cancel_a_queued_question(sock, cam, reset):
    running = sock.ask("Keep going?", max_new_tokens=SHORT)
    queued = sock.ask("Never mind?", max_new_tokens=SHORT)
    sock.send(type="cancel", id=queued["id"])
    end_q = sock.next("end", **{"job.id": queued["id"]})["job"]
    assert end_q["state"] == "cancelled" and end_q["text"] == ""
    end_r, _ = sock.answer(running["id"])
    assert end_r["state"] == "done"
    sock.send(type="cancel", id=queued["id"])
    assert "nothing to stop" in sock.next("notice")["message"]


def test_over_long_and_empty_questions_are_refused(sock, cam):
    sock.send(type="ask", question="x" * (MAX_Q + 1))
    err = sock.next("error")
    assert err["message"] == f"the question is {MAX_Q + 1} characters long; the limit is {MAX_Q}."
    assert err["fix"] == "shorten the question"
    sock.send(type="ask", question=" \t ")
    assert "empty" in sock.next("error")["message"]
    sock.send(type="ask", question="y" * 20_000)                    # larger than a socket message may be
    assert "too long" in sock.next("error")["message"]
    assert cam.worker.idle


def test_watch_mode_answers_each_new_frame(sock, cam, reset):
    sock.send(type="watch", on=True, question="Anything moving?", interval=0.5, max_new_tokens=1)
    assert sock.next("watch")["watch"]["on"] is True
    ends = [sock.next("end", **{"job.kind": "watch"})["job"] for _ in range(2)]
    sock.send(type="watch", on=False)
    assert sock.next("watch")["watch"]["on"] is False
    assert all(e["state"] == "done" and e["question"] == "Anything moving?" for e in ends)
    assert ends[0]["frame"]["key"] != ends[1]["frame"]["key"]
    assert wait_for(lambda: cam.worker.idle, WAIT)
    listed = [a["id"] for a in cam.watch.public()["answers"]]
    assert ends[0]["id"] in listed and ends[1]["id"] in listed


def test_a_question_outranks_a_running_watch_answer(sock, cam, reset):
    sock.send(type="watch", on=True, question="Watching?", interval=0.5)        # CAP_TOKENS-long answers
    watch_job = sock.next("job", **{"job.kind": "watch"})["job"]
    sock.next("token", id=watch_job["id"])
    mine = sock.ask("Me first?", max_new_tokens=1)
    assert mine["state"] == "queued"
    assert sock.next("end", **{"job.id": watch_job["id"]})["job"]["state"] == "cancelled"
    assert sock.answer(mine["id"])[0]["state"] == "done"
    # switching watch mode off stops its running answer too
    again = sock.next("job", **{"job.kind": "watch"})["job"]
    sock.send(type="watch", on=False)
    assert sock.next("end", **{"job.id": again["id"]})["job"]["state"] == "cancelled"


def test_bad_watch_settings_are_refused(sock, cam):
    before = cam.watch.public()
    sock.send(type="watch", on=True, question="Ok?", interval="soon")
    assert "not a number" in sock.next("error")["message"]
    assert cam.watch.public() == before                    # a refusal changes nothing
    sock.send(type="watch", on=True, question="Ok?", interval=0.1)
    assert "outside 0.5–3600 s" in sock.next("error")["message"]
    sock.send(type="watch", on=True, question="", interval=5)
    assert "empty" in sock.next("error")["message"]


# ---- uploads ------------------------------------------------------------------------------------------
def test_bad_uploads_get_clear_messages(http, images, tmp_path, cam, reset):
    r = http.post("/api/upload", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "JPEG, PNG, WebP or BMP" in r.json()["error"]
    r = upload(http, images["wide"], ctype="image/png")                       # JPEG bytes, PNG label
    assert r.status_code == 400 and r.json()["error"].startswith("the uploaded file is not a PNG")
    r = upload(http, images["corrupt"])
    assert r.status_code == 400 and "could not be decoded" in r.json()["error"]
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD)
    r = upload(http, big)
    assert r.status_code == 413 and "limit is 0.3 MB" in r.json()["error"] and r.json()["fix"]

    def chunks():                                                              # no Content-Length
        for _ in range(40):
            yield b"\xff\xd8\xff" + b"\0" * 10_000
    r = http.post("/api/upload", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "stopped reading" in r.json()["error"]
    r = http.post("/api/upload", content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "empty" in r.json()["error"]
    assert not cam.freeze_state()["on"]                                        # nothing was taken


# ---- access ---------------------------------------------------------------------------------------------
def test_token_is_checked_on_every_request_and_socket(cam):
    srv = LiveServer(cam, token="s3cret-token")
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for path in ("/", "/static/app.js", "/api/state", "/api/frame.jpg"):
                assert c.get(path).status_code == 401
            r = c.get("/", params={"token": "wrong"}, headers={"accept": "text/html"})
            assert r.status_code == 401 and "access token missing or wrong" in r.text and "<html" in r.text
            assert "Traceback" not in r.text
            r = c.get("/api/state", headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["fix"]
            assert c.get("/api/state", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
            r = c.get("/", params={"token": "s3cret-token"})
            assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
            assert c.get("/static/app.css").status_code == 200                 # the cookie now carries it
        with pytest.raises(InvalidStatus) as e:
            ws_client.connect(srv.ws_url, open_timeout=20).close()
        assert e.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            ws_client.connect(srv.ws_url + "?token=wrong", open_timeout=20).close()
        s = Socket(srv.ws_url + "?token=s3cret-token")
        assert s.state["model"]["backend"] == "onnx-fp32"
        s.close()
    finally:
        srv.stop()


def test_other_hosts_and_origins_are_refused(http, live):
    r = http.get("/api/state", headers={"host": "evil.example:8080"})
    assert r.status_code == 403 and "evil.example" in r.json()["error"]
    r = http.post("/api/upload", content=b"x", headers={"origin": "http://evil.example", "content-type": "image/png"})
    assert r.status_code == 403 and "another site" in r.json()["error"]
    with pytest.raises(InvalidStatus):
        ws_client.connect(live.ws_url, open_timeout=20, origin="http://evil.example").close()
    same = live.url.rstrip("/")
    s = Socket(live.ws_url, origin=same)        # the app's own page is fine
    s.close()


def test_no_token_needed_on_loopback_but_required_elsewhere():
    from fusion_edge.apps.camera_qa.security import resolve_token
    assert resolve_token("127.0.0.1", None) == (None, False)
    assert resolve_token("localhost", None) == (None, False)
    token, generated = resolve_token("0.0.0.0", None)
    assert generated and len(token) >= 20 and resolve_token("0.0.0.0", None)[0] != token
    assert resolve_token("192.168.1.5", "mine") == ("mine", False)


# ---- errors -----------------------------------------------------------------------------------------------
def test_protocol_errors_are_readable(sock, http):
    sock.ws.send("not json")
    assert "expected a JSON object" in sock.next("error")["message"]
    sock.send(type="explode")
    assert "unknown request type 'explode'" in sock.next("error")["message"]
    r = http.get("/no/such/page")
    assert r.status_code == 404 and r.json()["error"] == "Not Found"


def test_no_frame_yet_is_reported_not_crashed(cam, tmp_path):
    from starlette.testclient import TestClient

    from fusion_edge.apps.camera_qa.server import create_app
    empty = tmp_path / "empty"
    empty.mkdir()
    # the shared Pipeline: this app's worker never runs a job (there is no frame to ask about)
    app = CameraApp(cam.pipeline, parse_source(str(empty)), Settings(backoff=(0.05, 0.1))).start()
    try:
        assert wait_for(lambda: app.capture.status()["state"] == "retrying", 30)     # 2 xdist workers: headroom
        with pytest.raises(SourceError, match="no frame from folder empty yet"):
            app.ask("Anyone?")
        with pytest.raises(PromptError):
            app.set_watch(True, "", 5)
        client = TestClient(create_app(app), base_url="http://127.0.0.1")
        r = client.get("/api/frame.jpg")
        assert r.status_code == 503 and "has no images" in r.json()["error"] and "retrying" in r.json()["fix"]
        assert client.get("/api/state").json()["source"]["state"] == "retrying"
    finally:
        app.stop()


# ---- CLI: headless mode and the JSON-lines log ------------------------------------------------------------
@pytest.mark.slow
def test_headless_mode_prints_watch_answers_and_logs_json_lines(bundle, clip, tmp_path, capsys):
    from fusion_edge.cli import main
    log = tmp_path / "answers.jsonl"
    code = main(["camera", str(bundle), "--source", str(clip), "--no-browser", "--watch", "What is there?",
                 "--interval", "0.5", "--max-answers", "2", "--max-new-tokens", "2", "--log", str(log),
                 "--device", "cpu"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 2
    assert all(line.startswith("[") and " f" in line and "tok/s" in line for line in out)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) >= 2
    rec = records[0]
    assert rec["kind"] == "watch" and rec["question"] == "What is there?" and rec["state"] == "done"
    assert rec["source"] == "clip.avi" and rec["stats"]["new_tokens"] <= 2 and " ".join(rec["answer"].split()) in out[0]


def test_cli_refuses_bad_arguments_readably(bundle, clip, capsys):
    from fusion_edge.cli import main
    assert main(["camera", str(bundle), "--source", "nowhere/clip.mp4"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["camera", str(bundle), "--source", str(clip), "--no-browser"]) == 2
    assert "--watch" in capsys.readouterr().err
    assert main(["camera", str(bundle), "--source", str(clip), "--max-fps", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
