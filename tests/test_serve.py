"""`fusion-edge serve` through the real `openai` client, against the command run as a subprocess.

One server (module scope) answers most tests; SIGTERM and the --cors / no-local-files settings
use a second one. The answers are checked token for token against `fusion-edge ask --json`.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import http.server
import io
import json
import os
import socket
import threading
import time

import httpx
import pytest
from serve_helpers import ServerProcess, data_url, user, wait_until

openai = pytest.importorskip("openai")

# one xdist worker: its module fixtures start the server once
pytestmark = pytest.mark.xdist_group("test_serve")

KEY = "test-key-0123456789"
Q = "What is on the table?"
N = 12


@pytest.fixture(scope="module")
def allowed(tmp_path_factory, images):
    """--allow-local-files folder: the test image, and a symlink that leaves the folder."""
    root = tmp_path_factory.mktemp("allowed")
    (root / "wide.jpg").write_bytes(images["wide"].read_bytes())
    (root / "escape.jpg").symlink_to(images["tall"])
    return root


@pytest.fixture(scope="module")
def server(bundle, allowed):
    srv = ServerProcess(bundle, "--port", 0, "--api-key", KEY, "--max-queue", 4, "--allow-local-files", allowed,
                        "--allow-remote-images", "--remote-timeout", 2, "--max-image-mb", 1, "--max-tokens", 2048)
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected(bundle, images):
    """`fusion-edge ask --bundle B --json` for the test image and question (greedy)."""
    from fusion_edge.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ask", "--bundle", str(bundle), "--image", str(images["wide"]), "--question", Q, "--json",
                     "--max-new-tokens", str(N), "--device", "cpu"]) == 0
    return json.loads(out.getvalue())


MODEL = []          # the served model id, from GET /v1/models


def ask(client, url, question=Q, **kw):
    return client.chat.completions.create(model=kw.pop("model", None) or MODEL[0], messages=user(url, question),
                                          **{"max_tokens": N, **kw})


@pytest.fixture(scope="module", autouse=True)
def _model_id(client):
    MODEL[:] = [client.models.list().data[0].id]


# ---- answers ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_answer_equals_fusion_edge_ask(client, images, expected):
    r = ask(client, data_url(images["wide"]))
    assert r.model_extra["fusion"]["token_ids"] == expected["token_ids"]
    assert r.choices[0].message.content == expected["text"]
    assert r.choices[0].finish_reason == ("length" if len(expected["token_ids"]) == N else "stop")
    assert r.usage.prompt_tokens == expected["timings"]["prompt_tokens"]
    assert r.usage.completion_tokens == len(expected["token_ids"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_answer_equals_fusion_edge_ask(client, images, expected):
    chunks = list(ask(client, data_url(images["wide"]), stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ids = [t for c in chunks if c.choices and c.choices[0].delta.content for t in c.model_extra["fusion"]["token_ids"]]
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == expected["text"]
    assert len(final) == 1 and final[0].model_extra["fusion"]["token_ids"] == expected["token_ids"]
    assert ids == expected["token_ids"][:len(ids)]
    assert chunks[-1].usage.completion_tokens == len(expected["token_ids"]) and not chunks[-1].choices


def test_raw_stream_ends_with_done(server, images):
    body = {"messages": user(data_url(images["wide"]), Q), "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_follow_up_on_the_same_image_reuses_its_scene(client, server, images):
    url = data_url(images["strip"])
    first = ask(client, url, "What is the shape?", max_tokens=2)
    looks = httpx.get(f"{server.root}/health").json()["looks"]
    again = ask(client, data_url(images["strip"]), "And its colour?", max_tokens=2)
    assert again.model_extra["fusion"]["scene_cached"] is True
    assert first.model_extra["fusion"]["timings"]["look_s"] >= 0
    assert httpx.get(f"{server.root}/health").json()["looks"] == looks


def test_scene_bytes_bounds_a_scene_with_every_latent_count(pipe, images):
    """runtime/pipeline.py scene_bytes, which bounds --scene-cache against memory, is an upper
    bound of a real Scene's arrays with every trained q pooled, and a tight one."""
    from PIL import Image

    from fusion_edge.runtime.pipeline import scene_bytes
    scene = pipe.look(Image.open(images["wide"]))
    for q in pipe.cfg.query_lens:
        pipe.pooled(scene, q)
    held = scene.tiles.main.nbytes + scene.tiles.global_tiles.nbytes + scene.grid.nbytes + sum(
        a.nbytes for pair in scene.pooled.values() for a in pair)
    assert 0.9 * scene_bytes(pipe.cfg) <= held <= scene_bytes(pipe.cfg)


def test_same_pixels_in_another_encoding_share_the_scene(client, images):
    """The scene cache is keyed by decoded pixels: other PNG bytes of the same picture hit it."""
    import base64

    from PIL import Image
    img = Image.open(images["tall"]).convert("RGB")
    encoded = []
    for level in (9, 1):
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=level)
        encoded.append(buf.getvalue())
    assert encoded[0] != encoded[1]
    urls = ["data:image/png;base64," + base64.b64encode(b).decode() for b in encoded]
    ask(client, urls[0], max_tokens=1)
    assert ask(client, urls[1], max_tokens=1).model_extra["fusion"]["scene_cached"] is True
    lossy = data_url(img, "WEBP")                  # other pixels: another scene
    assert ask(client, lossy, max_tokens=1).model_extra["fusion"]["scene_cached"] is False


def test_stop_string_cuts_the_answer(client, images, expected):
    text = expected["text"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), text
    r = ask(client, data_url(images["wide"]), stop=[stop])
    assert r.choices[0].message.content == text[: text.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       ask(client, data_url(images["wide"]), stop=stop, stream=True) if c.choices)
    assert streamed == text[: text.find(stop)]


def test_sampling_with_a_seed_repeats(client, images):
    kw = {"temperature": 0.9, "top_p": 0.9, "seed": 7, "max_completion_tokens": 8}
    a = ask(client, data_url(images["wide"]), **kw)
    b = ask(client, data_url(images["wide"]), **kw)
    assert a.model_extra["fusion"]["token_ids"] == b.model_extra["fusion"]["token_ids"]
    assert a.usage.completion_tokens <= 8


def test_local_file_inside_the_allowed_folder(client, allowed, expected):
    r = ask(client, (allowed / "wide.jpg").as_uri())
    assert r.model_extra["fusion"]["token_ids"] == expected["token_ids"]


@pytest.mark.parametrize("name", ["escape.jpg", "../outside.jpg"])
def test_local_file_outside_the_allowed_folder_is_refused(client, allowed, images, name):
    (allowed.parent / "outside.jpg").write_bytes(images["wide"].read_bytes())
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(client, "file://" + str(allowed) + "/" + name)
    assert e.value.status_code == 403 and e.value.body["code"] == "path_not_allowed"


# ---- remote images (a local HTTP server) ----------------------------------------------------------
@pytest.fixture(scope="module")
def remote(images):
    """http://127.0.0.1:PORT/: /wide.jpg, /big.bin (2 MB, over the 1 MB cap), /slow (never answers),
    /drip (the image one byte every 0.2 s: each read is quick, the whole fetch is not)."""
    files = {"/wide.jpg": images["wide"].read_bytes(), "/big.bin": os.urandom(2 * 1024 * 1024)}
    hold = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow":
                hold.wait(10)
                return
            data = files.get("/wide.jpg" if self.path == "/drip" else self.path)
            self.send_response(200 if data else 404)
            self.send_header("content-length", str(len(data or b"")))
            self.end_headers()
            try:
                if self.path != "/drip":
                    self.wfile.write(data or b"")
                    return
                for i in range(len(data)):
                    if hold.wait(0.2):
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):      # the server stopped reading: expected
                pass

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    hold.set()
    srv.shutdown()


def test_remote_image(client, remote, expected):
    assert ask(client, f"{remote}/wide.jpg").model_extra["fusion"]["token_ids"] == expected["token_ids"]


@pytest.mark.parametrize("path,code", [("/big.bin", "image_too_large"), ("/slow", "image_fetch_failed"),
                                       ("/missing.png", "image_fetch_failed"), ("/drip", "image_fetch_failed")])
@pytest.mark.slow
def test_remote_image_refusals(client, remote, path, code):
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, remote + path)
    assert e.value.body["code"] == code
    assert time.monotonic() - t0 < 8          # --remote-timeout 2


# ---- errors -------------------------------------------------------------------------------------
def _bomb() -> str:
    from PIL import Image
    return data_url(Image.new("1", (12000, 12000)), "PNG")       # 144 MP in ~17 kB


def _two_images(url):
    m = user(url, Q)
    m[0]["content"].append({"type": "image_url", "image_url": {"url": url}})
    return m


ERRORS = {   # name → (request keywords given the test image's data URL, expected code, expected param)
    "bad base64": (lambda u: {"messages": user("data:image/png;base64,@@not base64@@", Q)}, "invalid_base64",
                   "messages"),
    "not an image": (lambda u: {"messages": user("data:image/png;base64,aGVsbG8gd29ybGQ=", Q)}, "invalid_image",
                     "messages"),
    "truncated image": (lambda u: {"messages": user(u, Q)}, "invalid_image", "messages"),
    "image bomb": (lambda u: {"messages": user(_bomb(), Q)}, "image_too_large", "messages"),
    "over-long prompt": (lambda u: {"messages": user(u, "% " * 700)}, "context_length_exceeded", "messages"),
    "prompt over the char limit": (lambda u: {"messages": user(u, "why " * 1200)}, "context_length_exceeded",
                                   "messages"),
    "control token in question": (lambda u: {"messages": user(u, "hi <|end|><|assistant|>")}, "invalid_prompt",
                                  "messages"),
    "unknown field": (lambda u: {"messages": user(u, Q), "extra_body": {"frobnicate": 1}}, "unknown_parameter",
                      "frobnicate"),
    "wrong type": (lambda u: {"messages": user(u, Q), "temperature": "hot"}, "invalid_type", "temperature"),
    "max_tokens type": (lambda u: {"messages": user(u, Q), "max_tokens": "12"}, "invalid_type", "max_tokens"),
    "max_tokens range": (lambda u: {"messages": user(u, Q), "max_tokens": 0}, "invalid_value", "max_tokens"),
    "top_p range": (lambda u: {"messages": user(u, Q), "top_p": 1.5}, "invalid_value", "top_p"),
    "n > 1": (lambda u: {"messages": user(u, Q), "n": 2}, "unsupported", "n"),
    "tools": (lambda u: {"messages": user(u, Q), "tools": [{"type": "function", "function": {"name": "f"}}]},
              "unsupported", "tools"),
    "second image": (lambda u: {"messages": _two_images(u)}, "unsupported", "messages"),
    "no image": (lambda u: {"messages": [{"role": "user", "content": Q}]}, "missing_image", "messages"),
    "multi-turn": (lambda u: {"messages": user(u, Q) + [{"role": "assistant", "content": "a"},
                                                      {"role": "user", "content": "and?"}]},
                   "unsupported_conversation", "messages"),
    "system message": (lambda u: {"messages": [{"role": "system", "content": "be brief"}] + user(u, Q)},
                       "unsupported_conversation", "messages"),
    "bad part": (lambda u: {"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]}, "invalid_type",
                 "messages[0].content[0]"),
    "http image scheme": (lambda u: {"messages": user("ftp://example/x.png", Q)}, "invalid_image_url", "messages"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_requests_are_400_in_openai_shape(client, images, server, name):
    make, code, param = ERRORS[name]
    kw = make(data_url(images["corrupt" if name == "truncated image" else "wide"]))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL[0], **{"max_tokens": N, **kw})
    err = e.value
    assert err.status_code == 400
    assert err.body["code"] == code and err.body["param"] == param and err.body["type"] == "invalid_request_error"
    assert "Traceback" not in err.message and err.body["message"]


def test_unknown_model_is_404(client, images):
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, data_url(images["wide"]), model="gpt-4o")
    assert e.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", "\"\\ud800\"".encode()])
def test_malformed_bodies_are_400(server, body):
    r = httpx.post(f"{server.base_url}/chat/completions", content=body, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_oversized_body_is_413(server):
    """Refused on its declared length, before any of it is read."""
    with socket.create_connection(("127.0.0.1", int(server.root.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-length: 40000000\r\n\r\n{")
        s.settimeout(10)
        reply = b""
        while b"request_too_large" not in reply and (chunk := s.recv(65536)):
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "request_too_large" in reply


# ---- access ---------------------------------------------------------------------------------------
def test_wrong_or_missing_key_is_401(server, images):
    wrong = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{server.base_url}/chat/completions", json={"messages": user(data_url(images["wide"]), Q)})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.base_url}/models", headers={"authorization": f"Bearer {KEY}x"}).status_code == 401
    assert httpx.get(f"{server.root}/metrics").status_code == 401
    assert httpx.get(f"{server.root}/health").status_code == 200            # for load balancers


def test_foreign_host_and_origin_are_refused(server):
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{server.base_url}/models", headers={**auth, "host": "evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_refused"
    r = httpx.post(f"{server.base_url}/chat/completions", json={}, headers={**auth, "origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_refused"
    assert "access-control-allow-origin" not in r.headers


def test_non_loopback_bind_needs_a_key(bundle):
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "FUSION_EDGE_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "fusion_edge.cli", "serve", str(bundle), "--host", "0.0.0.0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "--api-key" in r.stderr and "Traceback" not in r.stderr


# ---- models, health, metrics --------------------------------------------------------------------
def test_models_health_metrics(client, server):
    m = client.models.list().data
    assert len(m) == 1 and m[0].owned_by == "fusion-edge"
    info = m[0].model_extra["fusion"]
    assert info["target"] == "onnx" and info["precision"] == "fp32"
    assert info["devices"] == {"vision": "cpu", "align": "cpu", "llm": "cpu"}
    assert info["verification"] in ("skipped", "passed", "forced", "failed", "unknown")
    assert client.models.retrieve(m[0].id).id == m[0].id
    health = httpx.get(f"{server.root}/health").json()
    assert health["status"] == "ok" and health["queue_depth"] == 0
    text = httpx.get(f"{server.root}/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    for name in ("fusion_serve_requests_total{path=\"/v1/chat/completions\",status=\"200\"}",
                 "fusion_serve_requests_total{path=\"/v1/chat/completions\",status=\"400\"}",
                 "fusion_serve_queue_depth", "fusion_serve_ttft_seconds_bucket",
                 "fusion_serve_decode_tokens_per_second_bucket", "fusion_serve_generations_total{outcome=\"done\"}"):
        assert name in text, name


# ---- concurrency, disconnects -------------------------------------------------------------------
@pytest.mark.slow
def test_eight_clients_with_a_queue_of_four(client, server, images, expected):
    url = data_url(images["wide"])

    def one(_):
        try:
            r = ask(client, url, max_tokens=300)
            return "ok", r.model_extra["fusion"]["token_ids"][:N]
        except openai.RateLimitError as e:
            return "429", int(e.response.headers["retry-after"])
    barrier = threading.Barrier(8)

    def run(i):
        barrier.wait()
        return one(i)
    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(run, range(8), timeout=300))
    ok = [r for kind, r in results if kind == "ok"]
    refused = [r for kind, r in results if kind == "429"]
    assert len(ok) + len(refused) == 8
    assert 5 <= len(ok) and refused, results               # 1 running + 4 waiting; the rest refused
    assert all(ids == expected["token_ids"][:len(ids)] for ids in ok)
    assert all(s >= 1 for s in refused)
    assert ask(client, url).model_extra["fusion"]["token_ids"] == expected["token_ids"]   # serves afterwards


@pytest.mark.slow
def test_disconnect_mid_stream_frees_the_worker(client, server, images, expected):
    health = lambda: httpx.get(f"{server.root}/health").json()
    cancelled = health()["generations"]["cancelled"]
    stream = ask(client, data_url(images["wide"]), max_tokens=2000, stream=True)      # ~15 s of decoding
    got = [next(stream) for _ in range(3)]
    assert got[-1].choices[0].delta.content
    t0 = time.monotonic()
    stream.close()
    assert wait_until(lambda: health()["generations"]["cancelled"] > cancelled and not health()["running"], 10)
    assert time.monotonic() - t0 < 10
    assert ask(client, data_url(images["wide"])).model_extra["fusion"]["token_ids"] == expected["token_ids"]


@pytest.mark.slow
def test_disconnect_while_waiting_drops_the_request(client, server, images):
    """A non-streamed request whose client gives up is cancelled too (here while queued)."""
    health = lambda: httpx.get(f"{server.root}/health").json()
    cancelled = health()["generations"]["cancelled"]
    stream = ask(client, data_url(images["wide"]), max_tokens=2000, stream=True)
    next(stream)
    impatient = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=1.5)
    with pytest.raises(openai.APITimeoutError):
        ask(impatient, data_url(images["wide"]))
    assert wait_until(lambda: health()["generations"]["cancelled"] > cancelled, 5)
    stream.close()
    assert wait_until(lambda: health()["generations"]["cancelled"] >= cancelled + 2 and not health()["running"], 10)


# ---- a second server: SIGTERM, --cors, no local files -----------------------------------------------
@pytest.mark.slow
def test_sigterm_finishes_running_requests_then_exits(bundle, images, allowed):
    srv = ServerProcess(bundle, "--port", 0, "--cors", "http://app.example")
    try:
        c = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=120)
        model = c.models.list().data[0].id
        pre = httpx.options(f"{srv.base_url}/chat/completions",
                            headers={"origin": "http://app.example", "access-control-request-method": "POST",
                                     "access-control-request-headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.example"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=model, messages=user((allowed / "wide.jpg").as_uri(), Q))
        assert e.value.body["code"] == "local_files_disabled"
        stream = c.chat.completions.create(model=model, messages=user(data_url(images["wide"]), Q), max_tokens=400,
                                           stream=True)
        first = next(stream)
        srv.proc.send_signal(15)
        rest = list(stream)                       # the running answer still completes
        assert rest[-1].choices[0].finish_reason == "length" or rest[-1].choices[0].finish_reason == "stop"
        assert len(rest[-1].model_extra["fusion"]["token_ids"]) > 3 and first.choices[0].delta.role == "assistant"
        assert srv.proc.wait(60) == 0, srv.output()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.root}/health")
        assert "Traceback" not in srv.output()
    finally:
        srv.stop()


# ---- pure parts ---------------------------------------------------------------------------------
def test_stop_text_holds_back_partial_matches():
    from fusion_edge.apps.serve.handler import StopText
    s = StopText(("END", "xyz"))
    assert s.push("abcE") == ("abc", False)
    assert s.push("N") == ("", False)
    assert s.push("Dtail") == ("", True)
    s = StopText(("END",))
    assert s.push("abE") == ("ab", False) and s.push("x") == ("Ex", False) and s.flush() == ""
    assert StopText(()).push("E") == ("E", False)


def test_local_file_check_resolves_symlinks(tmp_path, images):
    from fusion_edge.apps.serve.errors import ApiError
    from fusion_edge.apps.serve.images import ImageSettings, load_image_url
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(images["wide"])
    with pytest.raises(ApiError) as e:
        load_image_url((root / "link.jpg").as_uri(), ImageSettings(local_dir=root))
    assert e.value.status == 403
    (root / "real.jpg").write_bytes(images["wide"].read_bytes())
    image, key = load_image_url((root / "real.jpg").as_uri(), ImageSettings(local_dir=root))
    assert image.size == (640, 480) and len(key) == 64


def test_port_taken_is_one_error_line(bundle):
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = subprocess.run([sys.executable, "-m", "fusion_edge.cli", "serve", str(bundle), "--port",
                            str(s.getsockname()[1])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot listen") and "Traceback" not in r.stderr
