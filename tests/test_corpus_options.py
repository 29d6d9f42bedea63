"""Issue 28 item 1: numeric and path options at their extremes (tests/corpus/options.py), through
the real command line, the Python API, the camera app's settings and web socket messages, the
ROS 2 node's parameters and the OpenAI-compatible HTTP app. Every bad value is one typed error
(command line: exit 2, one `error:` and one `fix:` line, no traceback; HTTP: 400 in OpenAI's
error shape) raised before any model work, writing nothing; the documented clamps are accepted.
(`ask`'s own options: tests/test_ask_options.py.)"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ros_domain_id

from fusion_edge.bench.runner import BenchError, Settings, run_bench
from fusion_edge.calibration.calibrate import calibrate_bundle
from fusion_edge.cli import _parser, main
from fusion_edge.export.cli_export import verify_measure
from fusion_edge.export.tiny import make_tiny_checkpoint
from fusion_edge.runtime import option_types as ot
from fusion_edge.runtime.errors import FusionEdgeError, OptionError, PromptError
from fusion_edge.runtime.pipeline import Pipeline
from fusion_edge.targets import export_bundle
from tests.corpus import assert_clean_failure, bounded
from tests.corpus import options as option_corpus

BOUND_S = 60          # a refused option takes well under a second; loading the bundle's manifest included


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def no_model_work(monkeypatch):
    """The first step of real work on every path: opening the graphs, encoding an image, the
    reference, exporting a graph, recording calibration, a benchmark worker or its probe."""
    from fusion_edge.bench import runner
    from fusion_edge.calibration import calibrate
    from fusion_edge.export import bundle_export
    from fusion_edge.export.reference import FusionReference
    from fusion_edge.runtime import backends

    def refuse(*args, **kwargs):
        raise AssertionError("model work started before the options were checked")
    monkeypatch.setattr(backends, "open_backends", refuse)
    monkeypatch.setattr(Pipeline, "look", refuse)
    monkeypatch.setattr(FusionReference, "__init__", refuse)
    monkeypatch.setattr(bundle_export, "export_graph", refuse)
    monkeypatch.setattr(calibrate, "record_calibration", refuse)
    monkeypatch.setattr(runner, "run_worker", refuse)
    monkeypatch.setattr(runner, "measure_bandwidth", refuse)


def fill(argv: list[str], values: dict) -> list[str]:
    return [a.format(**values) if "{" in a and not a.startswith("{\"") else a for a in argv]


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def place(tmp_path, request, argv: list[str], words: str) -> tuple[list[str], str]:
    """The case's paths: {tmp}, {file}, {dir}, and the tiny model only where the case names it."""
    (tmp_path / "a.txt").write_text("not a model, not an image\n")
    (tmp_path / "folder").mkdir()
    values = {"tmp": str(tmp_path), "file": str(tmp_path / "a.txt"), "dir": str(tmp_path / "folder")}
    text = " ".join(argv)
    if "{ckpt}" in text:
        values["ckpt"] = str(request.getfixturevalue("tiny_checkpoint")("phi3", "so400m"))
    if "{bundle}" in text:
        values["bundle"] = str(request.getfixturevalue("onnx_bundle")("phi3", "so400m"))
    return fill(argv, values), words.format(**values)


# ---- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("case,argv,words", option_corpus.CLI, ids=[c[0] for c in option_corpus.CLI])
def test_bad_option_is_one_clear_error_before_any_work(case, argv, words, tmp_path, request, capsys):
    argv, words = place(tmp_path, request, argv, words)
    request.getfixturevalue("no_model_work")           # once the tiny model exists
    before = tree(tmp_path)
    rc = bounded(lambda: main(argv), BOUND_S)
    out, err = capsys.readouterr()
    assert_clean_failure(rc, err)
    assert all(line.startswith(("error:", "  fix:", "notice:", "warning:")) for line in err.splitlines()), err
    assert words in err, err
    assert tree(tmp_path) == before, "a refused option wrote something"


def test_every_numeric_and_path_option_is_in_the_corpus():
    """Every option of every command that takes a number or a path has a case: a new option
    without one fails here. Not numbers or paths: flags, choices, free text (--question, --host,
    hub ids), and the sources and images, which have corpora of their own. `ask`'s options:
    tests/test_ask_options.py; `ros2`'s parameters: the ROS 2 tests below."""
    not_numeric = {"--question", "--model", "--bundle", "--image", "--source", "--host", "--token", "--api-key",
                   "--model-id", "--cors", "--address", "--watch", "--device", "--bundles", "--native"}
    covered = {(argv[0], a) for _, argv, _ in option_corpus.CLI for a in argv if a.startswith("-")}
    sub = next(a for a in _parser()._actions if a.dest == "command")
    missing = [f"{name} {action.option_strings[0]}" for name, parser in sub.choices.items()
               if name not in ("ask", "ros2") for action in parser._actions
               if action.option_strings and action.nargs != 0 and action.choices is None
               and not set(action.option_strings) & (not_numeric | {"-h", "--help"})
               and not any((name, o) in covered for o in action.option_strings)]
    assert not missing, missing


@pytest.mark.parametrize("case,argv,dest,value", option_corpus.CLAMPS, ids=[c[0] for c in option_corpus.CLAMPS])
def test_documented_edges_are_accepted_as_they_are(case, argv, dest, value, tmp_path):
    args, unknown = _parser().parse_known_args(fill(argv, {"tmp": str(tmp_path), "bundle": "B",
                                                           "dir": str(tmp_path)}))
    assert not unknown and getattr(args, dest) == value


def test_argparse_usage_errors_are_one_error_and_fix_too(capsys):
    for argv in (["ask", "--bundle", "b"], ["no-such-command"], ["serve", "b", "--no-such-flag"],
                 ["export", "ck", "-o", "o", "--target", "tflite"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert_clean_failure(2, err)
        assert "--help" in err.split("fix:", 1)[1]


# ---- the Python API -------------------------------------------------------------------------------
API = [   # (case id, call(tmp) with `tmp` the case's folder, typed error, words)
    ("Pipeline.open threads=0", lambda t: Pipeline.open(t / "none", threads=0), OptionError, "threads 0 is out of"),
    ("Pipeline.open threads=-1", lambda t: Pipeline.open(t / "none", threads=-1), OptionError, "threads -1"),
    ("Pipeline.open threads huge", lambda t: Pipeline.open(t / "none", threads=10 ** 6), OptionError, "out of range"),
    ("Pipeline.open threads=1.5", lambda t: Pipeline.open(t / "none", threads=1.5), OptionError, "whole number"),
    ("Pipeline.open threads=True", lambda t: Pipeline.open(t / "none", threads=True), OptionError, "whole number"),
    ("make_tiny_checkpoint seed=-1", lambda t: make_tiny_checkpoint(t / "c", seed=-1), OptionError, "--seed -1"),
    ("make_tiny_checkpoint shards=0", lambda t: make_tiny_checkpoint(t / "c", shards=0), OptionError, "--shards 0"),
    ("make_tiny_checkpoint query_len='0'", lambda t: make_tiny_checkpoint(t / "c", query_len="0"), OptionError,
     "--query-len 0"),
    ("make_tiny_checkpoint query_len beyond siglip2", lambda t: make_tiny_checkpoint(t / "c", tower="siglip2",
                                                                                     query_len="729"),
     OptionError, "it must be from 1 to 576"),
    ("export_bundle steps=0", lambda t: export_bundle(str(t / "none"), t / "b", steps=0), OptionError,
     "--verify-steps 0"),
    ("export_bundle eval_cases=0", lambda t: export_bundle(str(t / "none"), t / "b", "onnx", "int8", eval_cases=0),
     OptionError, "--eval-cases 0"),
    ("export_bundle calib_samples=-1", lambda t: export_bundle(str(t / "none"), t / "b", "onnx", "int8",
                                                                calib_samples=-1), OptionError, "--calib-samples -1"),
    ("export_bundle block_size=48", lambda t: export_bundle(str(t / "none"), t / "b", "onnx", "int4", block_size=48),
     OptionError, "--block-size 48 is not one of"),
    ("export_bundle threads=0", lambda t: export_bundle(str(t / "none"), t / "b", "gguf", "int8", threads=0),
     OptionError, "threads 0"),
    ("calibrate_bundle samples=0", lambda t: calibrate_bundle(t / "none", t / "r", samples=0), OptionError,
     "--samples 0"),
    ("calibrate_bundle holdout=-1", lambda t: calibrate_bundle(t / "none", t / "r", holdout=-1), OptionError,
     "--holdout -1"),
    ("calibrate_bundle max_mb=nan", lambda t: calibrate_bundle(t / "none", t / "r", max_mb=math.nan), OptionError,
     "--max-mb nan"),
    ("calibrate_bundle max_mb=inf", lambda t: calibrate_bundle(t / "none", t / "r", max_mb=math.inf), OptionError,
     "--max-mb inf"),
    ("calibrate_bundle threads=0", lambda t: calibrate_bundle(t / "none", t / "r", threads=0), OptionError,
     "--threads 0"),
    ("verify_measure steps=0", lambda t: verify_measure(str(t / "none"), "m", "fp32", "onnx", {}, 0), OptionError,
     "--steps 0"),
    ("verify_measure eval_cases=0", lambda t: verify_measure(str(t / "none"), "m", "int8", "onnx", {}, 4, 0),
     OptionError, "--eval-cases 0"),
    ("run_bench timeout nan", lambda t: run_bench(Settings("m", ["b"], timeout_s=math.nan)), BenchError,
     "--timeout nan"),
    ("run_bench threads 0", lambda t: run_bench(Settings("m", ["b"], threads=0)), BenchError, "--threads 0"),
    ("run_bench cases huge", lambda t: run_bench(Settings("m", ["b"], cases=10 ** 6)), BenchError, "--cases 1000000"),
    ("run_bench bandwidth 0", lambda t: run_bench(Settings("m", ["b"], bandwidth_bytes=0)), BenchError,
     "bandwidth_bytes 0"),
]


@pytest.mark.parametrize("case,call,error,words", API, ids=[c[0] for c in API])
def test_python_api_refuses_the_same_values(case, call, error, words, tmp_path, no_model_work):
    with pytest.raises(error) as e:
        call(tmp_path)
    assert words in str(e.value) and e.value.fix
    assert not any(tmp_path.iterdir()), "a refused option wrote something"


# ---- the shared checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("value,low,high,ok", [
    (0, 0, None, True), (-1, 0, None, False), (5, 1, 5, True), (6, 1, 5, False), (np.int64(3), 1, None, True),
    (True, 0, None, False), (1.0, 0, None, False), ("3", 0, None, False), (None, 0, None, False),
    (10 ** 30, 0, None, True), (10 ** 30, 0, 2 ** 64, False)])
def test_check_int(value, low, high, ok):
    if ok:
        assert ot.check_int(value, "--n", low, high) == value
    else:
        with pytest.raises(OptionError, match="--n"):
            ot.check_int(value, "--n", low, high)


@pytest.mark.parametrize("value,kw,ok", [
    (0.0, {"low": 0}, True), (0.0, {"low": 0, "low_open": True}, False), (1e-300, {"low": 0, "low_open": True}, True),
    (math.nan, {}, False), (math.inf, {}, False), (-math.inf, {"low": 0}, False), (10 ** 400, {}, False),
    (np.float32("nan"), {}, False), (3, {"high": 3}, True), (3.5, {"high": 3}, False), (True, {}, False),
    ("1", {}, False)])
def test_check_float(value, kw, ok):
    if ok:
        assert ot.check_float(value, "--x", **kw) == float(value)
    else:
        with pytest.raises(OptionError, match="--x"):
            ot.check_float(value, "--x", **kw)


def test_path_checks(tmp_path):
    (tmp_path / "f.npy").write_text("x")
    (tmp_path / "d").mkdir()
    assert ot.check_output_file(tmp_path / "new.npy", "--o", ".npy") == tmp_path / "new.npy"
    assert ot.check_output_dir(tmp_path / "a" / "b", "-o") == tmp_path / "a" / "b"       # parents: created later
    assert ot.check_existing_file(tmp_path / "f.npy", "--q") and ot.check_existing_dir(tmp_path / "d", "--d")
    for call, words in ((lambda: ot.check_output_file(tmp_path / "d", "--o"), "is not a regular file"),
                        (lambda: ot.check_output_file(tmp_path / "x.txt", "--o", ".npy"), "does not end in .npy"),
                        (lambda: ot.check_output_file(tmp_path / "no" / "x", "--o"), "does not exist"),
                        (lambda: ot.check_output_dir(tmp_path / "f.npy", "-o"), "is not a folder"),
                        (lambda: ot.check_output_dir(tmp_path / "f.npy" / "x" / "y", "-o"), "is a file"),
                        (lambda: ot.check_existing_file(tmp_path / "d", "--q"), "is a folder, not a file"),
                        (lambda: ot.check_existing_dir(tmp_path / "f.npy", "--d"), "is not a folder"),
                        (lambda: ot.check_existing_path(tmp_path / "none", "--c"), "does not exist")):
        with pytest.raises(OptionError, match=words):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.npy"]


# ---- the camera app: settings and web socket messages -----------------------------------------------
@pytest.mark.parametrize("kw,words", [
    ({"max_new_tokens": 0}, "max_new_tokens must be a whole number"), ({"max_new_tokens": 2.0}, "whole number"),
    ({"temperature": math.nan}, "temperature nan"), ({"temperature": -1.0}, "temperature -1"),
    ({"max_question_chars": 0}, "--max-question-chars 0"), ({"max_upload_bytes": 0}, "max_upload_bytes 0"),
    ({"max_fps": math.inf}, "--max-fps inf"), ({"max_fps": 0}, "--max-fps 0"),
    ({"slide_seconds": math.nan}, "--slide-seconds nan")])
def test_camera_settings_refuse_extremes(kw, words):
    from fusion_edge.apps.camera_qa.app import Settings
    with pytest.raises(FusionEdgeError, match=None) as e:
        Settings(**kw)
    assert words in str(e.value)


@pytest.fixture
def camera_app(tmp_path):
    """A CameraApp that never starts: messages are checked before any frame or model is needed."""
    from fusion_edge.apps.camera_qa.app import CameraApp, Settings
    from fusion_edge.apps.camera_qa.sources import parse_source
    (tmp_path / "frames").mkdir()
    return CameraApp(None, parse_source(str(tmp_path / "frames")), Settings(max_new_tokens=40))


WS_BAD = [   # (message, words of the error reply)
    ({"type": "ask", "question": "Hi?", "max_new_tokens": 0}, "max_new_tokens must be a whole number"),
    ({"type": "ask", "question": "Hi?", "max_new_tokens": -5}, "got -5"),
    ({"type": "ask", "question": "Hi?", "max_new_tokens": "12"}, "got '12'"),
    ({"type": "ask", "question": "Hi?", "max_new_tokens": 1.5}, "got 1.5"),
    ({"type": "ask", "question": "Hi?", "max_new_tokens": True}, "got True"),
    ({"type": "ask", "question": "Hi?", "max_new_tokens": float("inf")}, "got inf"),
    ({"type": "watch", "on": True, "question": "Hi?", "interval": float("nan")}, "watch interval nan"),
    ({"type": "watch", "on": True, "question": "Hi?", "interval": 1e308}, "is outside"),
    ({"type": "watch", "on": True, "question": "Hi?", "interval": -1}, "is outside"),
    ({"type": "watch", "on": True, "question": "Hi?", "interval": 5, "max_new_tokens": 0}, "at least 1"),
]


@pytest.mark.parametrize("msg,words", WS_BAD, ids=[f"{m['type']}-{i}" for i, (m, _) in enumerate(WS_BAD)])
def test_camera_socket_messages_refuse_extremes(msg, words, camera_app):
    from fusion_edge.apps.camera_qa.server import handle_message
    reply = handle_message(camera_app, json.dumps(msg))        # json writes inf / nan as Infinity / NaN
    assert reply["type"] == "error" and words in reply["message"] and reply["fix"], reply
    assert not camera_app.watch.on


def test_camera_token_budget_clamps_to_the_limit(camera_app):
    """A question may ask for fewer tokens than --max-new-tokens, never more (documented)."""
    assert camera_app._token_budget(None) == 40 and camera_app._token_budget(5) == 5
    assert camera_app._token_budget(10 ** 30) == 40 and camera_app._token_budget(np.int64(7)) == 7


# ---- ROS 2 parameters -------------------------------------------------------------------------------
class _Context:
    """What params.check reads of a pipeline: a trt bundle's 2048-position context."""
    image_tokens = 729

    def context_limit(self):
        return 2048, "the bundle's context"


ROS_BAD = [   # (parameter, value, words)
    ("max_new_tokens", 0, "max_new_tokens must be a whole number"), ("max_new_tokens", -1, "got -1"),
    ("max_new_tokens", 3000, "max_new_tokens 3000 exceeds the bundle's context of 2048"),
    ("max_new_tokens", 10 ** 12, "exceeds"), ("temperature", math.nan, "temperature nan"),
    ("temperature", math.inf, "temperature inf"), ("temperature", -0.5, "temperature -0.5"),
    ("temperature", 11.0, "temperature must be 0..10"), ("watch_period_s", math.nan, "watch_period_s nan"),
    ("watch_period_s", math.inf, "watch_period_s inf"), ("watch_period_s", -1.0, "watch_period_s -1"),
    ("max_image_age_s", math.nan, "max_image_age_s nan"), ("max_image_age_s", -math.inf, "max_image_age_s -inf"),
    ("max_question_chars", 0, "max_question_chars 0"), ("max_question_chars", -3, "max_question_chars -3"),
    ("image_tokens", -1, "not -1"), ("no_such_param", 1, "has no parameter"),
]


@pytest.mark.parametrize("name,value,words", ROS_BAD, ids=[f"{n}={v}" for n, v, _ in ROS_BAD])
def test_ros2_parameters_at_their_extremes(name, value, words):
    from fusion_edge.apps.ros2 import params
    with pytest.raises((OptionError, PromptError)) as e:
        params.check(name, value, _Context())
    assert words in str(e.value) and e.value.fix


def test_ros2_parameters_at_their_edges_are_accepted():
    from fusion_edge.apps.ros2 import params
    for name, value in (("max_new_tokens", 1), ("max_new_tokens", 2048), ("temperature", 0.0), ("temperature", 10.0),
                        ("watch_period_s", 0.0), ("max_image_age_s", 0.0), ("max_image_age_s", 1e9),
                        ("max_question_chars", 10 ** 9), ("image_tokens", 0), ("image_tokens", 729)):
        params.check(name, value, _Context())
    params.check("max_new_tokens", 4096, None)            # before the model loads: only the node's own limit


@pytest.mark.parametrize("param,words", [("watch_period_s:=.nan", "watch_period_s nan is not a finite number"),
                                         ("max_new_tokens:=0", "max_new_tokens must be a whole number"),
                                         ("temperature:=.inf", "temperature inf")])
def test_ros2_node_refuses_a_bad_parameter_before_loading(param, words, tmp_path):
    """The node process: a bad -p value is one error before the model loads (no `loading` line;
    the bundle path does not even exist)."""
    pytest.importorskip("rclpy", reason="the ros2 extra (rclpy) is not installed")
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_domain_id("test_corpus_options")),     # never another worker's
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    r = subprocess.run([sys.executable, "-m", "fusion_edge.cli", "ros2", str(tmp_path / "none"), "--ros-args",
                        "-p", param], capture_output=True, text=True, timeout=120, env=env)
    assert_clean_failure(r.returncode, r.stderr)
    assert words in r.stderr and "loading" not in r.stderr, r.stderr


# ---- the HTTP app (OpenAI-compatible) -------------------------------------------------------------
@pytest.fixture(scope="module")
def http(onnx_bundle):
    """The serve app in process (fastapi's TestClient), its limits above the tiny model's context
    as the Python API allows, so that the per-request context check is reached."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fusion_edge.apps.serve.app import Service, create_app
    from fusion_edge.apps.serve.handler import ServeSettings
    from fusion_edge.apps.serve.request import Limits
    from fusion_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    service = Service.start(pipe, ServeSettings("tiny", Limits(8, 10 ** 6, 4000)), 4, 32 << 20)
    with TestClient(create_app(service), base_url="http://127.0.0.1") as client:
        yield client, service
    service.scheduler.drain(10)


def _png_url() -> str:
    import base64
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


HTTP_BAD = [   # (field values, param, code)
    ({"max_tokens": 0}, "max_tokens", "invalid_value"), ({"max_tokens": -1}, "max_tokens", "invalid_value"),
    ({"max_tokens": 10 ** 30}, "max_tokens", "invalid_value"), ({"max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ({"max_tokens": "12"}, "max_tokens", "invalid_type"), ({"max_tokens": True}, "max_tokens", "invalid_type"),
    ({"max_tokens": 131000}, "max_tokens", "context_length_exceeded"),           # fits the limit, not the context
    ({"max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
    ({"temperature": float("nan")}, "temperature", "invalid_value"),
    ({"temperature": float("inf")}, "temperature", "invalid_value"),
    ({"temperature": -0.1}, "temperature", "invalid_value"), ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"), ({"top_p": float("nan")}, "top_p", "invalid_value"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"seed": -1}, "seed", "invalid_value"), ({"seed": 2 ** 64}, "seed", "invalid_value"),
    ({"seed": 1.5}, "seed", "invalid_type"), ({"seed": "7"}, "seed", "invalid_type"),
]


@pytest.mark.parametrize("fields,param,code", HTTP_BAD, ids=[json.dumps(f) for f, _, _ in HTTP_BAD])
def test_http_request_fields_at_their_extremes_are_400(fields, param, code, http):
    client, service = http
    before = service.handler.looks
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png_url()}},
                                                      {"type": "text", "text": "What is it?"}]}], **fields}
    r = client.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert (err["param"], err["code"]) == (param, code), err
    assert "Traceback" not in err["message"] and service.handler.looks == before     # refused before the queue
