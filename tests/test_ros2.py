"""The ROS 2 node over real rclpy and Fast DDS.

One `fusion-edge ros2` process per module runs on the tiny bundle; this test process
publishes images and questions with rclpy (NodeClient) and reads the streamed and final
answers and the status. Expected answers come from `Pipeline.ask` on the same pixels.
Isolation: a domain id of this session's own (conftest.ros_domain_id: never another xdist
worker's), localhost-only discovery, and a namespace named after this process, so nothing here
talks to any other ROS 2 graph.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import draw_scene, ros_domain_id
from fusion_edge.apps.ros2.images import image_from_compressed, image_from_raw
from fusion_edge.runtime.errors import ImageError, MissingExtraError
from PIL import Image

# one xdist worker: its module fixtures start the ROS 2 node once
pytestmark = pytest.mark.xdist_group("test_ros2")

NS = f"/fe_test_{os.getpid()}"
NODE = f"{NS}/fusion_edge"
WAIT = 60.0
QUESTION = "What is in the picture?"


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ros_env():
    """This session's ROS environment (also used by rclpy in this process).

    The shipped Fast DDS profile lets raw 640x480 frames through best-effort QoS (the
    default 512 KiB shared-memory segment drops them).
    """
    from fusion_edge.apps.ros2.cli import FASTDDS_PROFILE
    env = {"ROS_DOMAIN_ID": str(ros_domain_id("test_ros2")), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield dict(os.environ)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def node_cmd(bundle, *ros_args):
    return [sys.executable, "-m", "fusion_edge.cli", "ros2", str(bundle), "--ros-args", "-r", f"__ns:={NS}",
            "-p", "device:=cpu", "-p", "max_new_tokens:=8", *ros_args]


@pytest.fixture(scope="module")
def node_proc(bundle, ros_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("ros2") / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(node_cmd(bundle), env=ros_env, stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def client(node_proc):
    from fusion_edge.apps.ros2.client import NodeClient
    c = NodeClient(NODE)
    try:
        c.wait_ready(WAIT)
    except TimeoutError:
        c.close()
        pytest.fail(f"node did not come up:\n{node_proc.log.read_text()[-3000:]}")
    assert c.prime(draw_scene(64, 48), timeout=WAIT)["job"]["state"] == "done"
    yield c
    c.close()


@pytest.fixture
def fresh(client):
    """Default parameters around each test."""
    yield client
    results = client.set_params(max_new_tokens=8, temperature=0.0, query_len=0, max_image_age_s=0.0,
                                watch_question="", watch_period_s=0.0, max_question_chars=500)
    assert all(r.successful for r in results), [r.reason for r in results]


def expected(pipe, image, question=QUESTION, n=8, **kw):
    """(text, token ids) of Pipeline.ask on the same image."""
    text = pipe.ask(pipe.look(image), question, max_new_tokens=n, **kw)
    return text, list(pipe.last_result.token_ids)


def send_frame(client, image, encoding="rgb8", stamp=None) -> float:
    """Publish a frame and give best-effort delivery a moment before the question follows."""
    t = client.publish_image(image, encoding, stamp)
    time.sleep(0.3)
    return t


def assert_done(status, stamp=None):
    job = status["job"]
    assert job["state"] == "done", status
    if stamp is not None:
        assert job["frame"]["time"] == pytest.approx(stamp, abs=1e-6)
    return job


# ---- image messages (no ROS graph needed) -----------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_raw_image_messages_decode_to_the_same_pixels(encoding):
    from fusion_edge.apps.ros2.client import image_msg
    img = draw_scene(37, 23, seed=7)
    msg = image_msg(img, encoding, pad=5)          # padded rows: step > width x channels
    out = image_from_raw(msg.encoding, msg.width, msg.height, msg.step, msg.data)
    want = img.convert("L").convert("RGB") if encoding == "mono8" else img
    assert np.array_equal(np.asarray(out), np.asarray(want))


@pytest.mark.parametrize("fields, words", [
    (("yuv422", 4, 4, 8, bytes(32)), "encoding 'yuv422'"),
    (("rgb8", 0, 4, 0, b""), "0x4"),
    (("rgb8", 4, 4, 10, bytes(40)), "row step is 10"),
    (("rgb8", 4, 4, 12, bytes(47)), "47 bytes"),
])
def test_bad_raw_images_are_refused_with_a_reason(fields, words):
    with pytest.raises(ImageError) as e:
        image_from_raw(*fields)
    assert words in e.value.problem and e.value.fix


def test_compressed_format_must_match_the_data():
    buf = io.BytesIO()
    draw_scene(20, 10).save(buf, "PNG")
    assert image_from_compressed("png", buf.getvalue()).size == (20, 10)
    with pytest.raises(ImageError, match="not JPEG"):
        image_from_compressed("jpeg", buf.getvalue())
    with pytest.raises(ImageError, match="'tiff'"):
        image_from_compressed("tiff", buf.getvalue())


def test_missing_rclpy_names_the_ros2_extra(monkeypatch):
    from fusion_edge.apps.ros2.deps import require_ros
    monkeypatch.setitem(sys.modules, "rclpy", None)        # import rclpy → ImportError
    with pytest.raises(MissingExtraError) as e:
        require_ros()
    assert e.value.extra == "ros2" and "fusion-edge[ros2]" in e.value.fix


def test_a_missing_bundle_is_error_and_fix_with_exit_2(tmp_path, ros_env):
    r = subprocess.run(node_cmd(tmp_path / "nope"), env=ros_env, capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr


# ---- the node ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_streamed_and_final_answer_equal_the_pipeline(fresh, pipe):
    img = draw_scene(640, 480, seed=11)
    stamp = send_frame(fresh, img)
    since = fresh.question(QUESTION)
    job = assert_done(fresh.wait_final(QUESTION, since, WAIT), stamp)
    text, ids = expected(pipe, img)
    assert (job["text"], job["token_ids"]) == (text, ids)
    assert fresh.wait_for("answer", lambda a: a == text, since, WAIT)
    assert [a for _, a in fresh.messages("answer", since)] == [text]        # once per question
    partials = [p for _, p in fresh.messages("answer_partial", since)]
    assert partials and partials[-1] == text
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(partials, partials[1:]))   # growing
    assert job["stats"]["new_tokens"] == len(ids) and job["stats"]["device"] == "cpu"
    cpu = {"vision": "cpu", "align": "cpu", "llm": "cpu"}
    assert job["stats"]["devices"] == cpu
    _, status = fresh.wait_for("status", lambda s: "devices" in s, since, WAIT)
    assert status["devices"] == cpu and status["tf32"] is False and status["tf32_parts"] == []
    assert status["device_map"] == {p: "CPUExecutionProvider" for p in cpu}


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "mono8", "png", "jpeg"])
@pytest.mark.slow
def test_every_input_encoding_gives_the_pipeline_answer(fresh, pipe, encoding):
    img = draw_scene(320, 240, seed=12)
    if encoding in ("png", "jpeg"):
        buf = io.BytesIO()
        img.save(buf, encoding.upper())
        stamp = fresh.publish_compressed(buf.getvalue(), encoding)
        time.sleep(0.3)
        want_img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    else:
        stamp = send_frame(fresh, img, encoding)
        want_img = img.convert("L").convert("RGB") if encoding == "mono8" else img
    job = assert_done(fresh.ask(QUESTION, WAIT), stamp)
    assert (job["text"], job["token_ids"]) == expected(pipe, want_img)


@pytest.mark.slow
def test_parameters_set_at_run_time_change_the_answer(fresh, pipe):
    img = draw_scene(200, 150, seed=13)
    send_frame(fresh, img)
    _, long_ids = expected(pipe, img, n=8)
    assert len(long_ids) > 2, "the tiny model must not stop by itself within 8 tokens for this test"
    for n in (2, 8):
        assert fresh.set_params(max_new_tokens=n)[0].successful
        assert fresh.get_params("max_new_tokens") == {"max_new_tokens": n}
        job = assert_done(fresh.ask(QUESTION, WAIT))
        assert (job["text"], job["token_ids"]) == expected(pipe, img, n=n)
        assert job["stats"]["new_tokens"] == n
    assert fresh.set_params(query_len=4)[0].successful                   # another trained latent count
    job = assert_done(fresh.ask(QUESTION, WAIT))
    assert job["token_ids"] == expected(pipe, img, query_len=4)[1]


def test_parameters_that_cannot_change_are_refused_with_a_reason(fresh, tmp_path):
    cases = {"bundle": (str(tmp_path), "restart the node"), "device": ("cuda", "restart the node"),
             "query_len": (5, "query_len 5"), "image_tokens": (144, "exported with"),
             "max_new_tokens": (0, "max_new_tokens must be"), "watch_period_s": (0.1, "watch interval")}
    for name, (value, words) in cases.items():
        before = fresh.get_params(name)
        if name == "watch_period_s":
            assert fresh.set_params(watch_question="Anyone?")[0].successful
        (result,) = fresh.set_params(**{name: value})
        assert not result.successful and words in result.reason, (name, result.reason)
        assert fresh.get_params(name) == before                          # nothing changed


def test_a_stale_frame_is_refused_and_a_fresh_one_answered(fresh):
    assert fresh.set_params(max_image_age_s=5.0)[0].successful
    img = draw_scene(160, 120, seed=14)
    send_frame(fresh, img, stamp=time.time() - 60)
    status = fresh.ask(QUESTION, WAIT)
    assert status["event"] == "error" and "s old" in status["last_error"]["problem"]
    stamp = send_frame(fresh, img)
    assert_done(fresh.ask(QUESTION, WAIT), stamp)


def test_bad_images_give_a_status_error_and_the_node_goes_on(fresh, pipe, node_proc):
    from sensor_msgs.msg import Image as ImageMsg
    bad = [ImageMsg(height=4, width=4, encoding="yuv422", step=8, data=bytes(32)),
           ImageMsg(height=4, width=4, encoding="rgb8", step=12, data=bytes(20))]
    for msg, words in zip(bad, ("yuv422", "20 bytes")):
        since = fresh.mark()
        fresh.publish_raw(msg)
        fresh.wait_for("status", lambda s, w=words: s["event"] == "error" and s["last_error"]["where"] == "image"
                       and w in s["last_error"]["problem"], since, WAIT)
    since = fresh.mark()
    fresh.publish_compressed(b"\x89PNG\r\n\x1a\n" + bytes(20), "jpeg")
    fresh.wait_for("status", lambda s: s["event"] == "error" and "not JPEG" in s["last_error"]["problem"],
                   since, WAIT)
    img = draw_scene(160, 120, seed=15)
    stamp = send_frame(fresh, img)
    job = assert_done(fresh.ask(QUESTION, WAIT), stamp)
    assert job["text"] == expected(pipe, img)[0] and node_proc.poll() is None


def test_empty_and_over_long_questions_are_refused(fresh):
    send_frame(fresh, draw_scene(64, 64, seed=16))
    status = fresh.ask("   ", WAIT)
    assert status["event"] == "error" and "empty" in status["last_error"]["problem"]
    assert fresh.set_params(max_question_chars=20)[0].successful
    long_q = "Is there anything at all on the table?"
    status = fresh.ask(long_q, WAIT)
    assert status["event"] == "error" and "limit is 20" in status["last_error"]["problem"]
    assert_done(fresh.ask("Colour?", WAIT))


def test_one_runs_one_waits_a_third_is_refused(fresh):
    assert fresh.set_params(max_new_tokens=48)[0].successful
    send_frame(fresh, draw_scene(160, 120, seed=17))
    since = fresh.mark()
    for q in ("First?", "Second?", "Third?"):
        fresh.question(q)
    refused = fresh.wait_final("Third?", since, WAIT)
    assert refused["event"] == "error" and "already waiting" in refused["last_error"]["problem"]
    assert refused["state"] == "answering" and refused["queued"]      # refused while the first one ran
    first = assert_done(fresh.wait_final("First?", since, WAIT))
    assert first["stats"]["new_tokens"] == 48
    assert_done(fresh.wait_final("Second?", since, WAIT))


@pytest.mark.slow
def test_watch_mode_answers_each_new_frame(fresh, pipe):
    watch_q = "Is anyone there?"
    assert fresh.set_params(watch_question=watch_q, watch_period_s=0.5)[0].successful
    for seed in (18, 19):
        img = draw_scene(160, 120, seed=seed)
        since = fresh.mark()
        stamp = fresh.publish_image(img)
        job = assert_done(fresh.wait_for("status", lambda s, t=stamp: (s.get("job") or {}).get("kind") == "watch"
                                         and s["job"]["state"] == "done"
                                         and abs(s["job"]["frame"]["time"] - t) < 1e-6, since, WAIT)[1])
        assert job["text"] == expected(pipe, img, watch_q)[0]
        assert fresh.wait_for("answer", lambda a, t=job["text"]: a == t, since, WAIT)
    after = fresh.mark()
    time.sleep(1.5)                        # 3 watch periods: the same frame is not asked about again
    assert not [s for _, s in fresh.messages("status", after) if '"kind": "watch"' in s]


def test_ask_service_answers_the_standing_question(fresh, pipe):
    (r,) = fresh.set_params(watch_question="What colour is the wall?")
    assert r.successful
    img = draw_scene(160, 120, seed=20)
    send_frame(fresh, img)
    res = fresh.call_ask(WAIT)
    assert res.success and res.message == expected(pipe, img, "What colour is the wall?")[0]


def test_distinct_questions_leave_no_native_memory_behind(pipe):
    """Every question the node takes is tokenized by Pipeline.check_ask (the worker's pipe.ask).
    The BPE word cache of the SentencePiece-style tokenizers keyed on whole questions there:
    ~1.6 KiB of native memory kept per new question, up to 10,000 of them (the ROS 2 soak's RSS
    creep, issue 28). glibc's count of bytes in use must stay flat over 2000 new questions."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    mallinfo2.restype = MallInfo2
    for i in range(50):                     # the repeated parts of the prompt, first allocations
        pipe.check_ask(f"warm-up {i}: {QUESTION}")
    before = mallinfo2().uordblks
    for i in range(2000):
        pipe.check_ask(f"q{i}: {QUESTION}")
    grown = mallinfo2().uordblks - before
    assert grown < 256 * 1024, f"{grown / 2000:.0f} bytes kept per distinct question"


def test_sigint_exits_cleanly_with_0(client, node_proc):
    node_proc.send_signal(signal.SIGINT)
    assert node_proc.wait(30) == 0, node_proc.log.read_text()[-3000:]
    assert "Traceback" not in node_proc.log.read_text()
