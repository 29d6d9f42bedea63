"""`fusion-edge serve --ray`: the same API on Ray Serve, 2 replicas on a local cluster that the
command starts on 127.0.0.1 (small object store, --port 0: a free port) and stops on SIGTERM;
overload on Ray is answered or refused with 429 + Retry-After (the replicas' queues, then the
proxy's bounded queue), and /health reports the fleet's replicas."""
from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_helpers import ServerProcess, data_url, user, wait_until

openai = pytest.importorskip("openai")
pytest.importorskip("ray")

Q = "What is on the table?"
N = 8


def ray_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.fixture(scope="module")
def expected(onnx_bundle, images):
    from fusion_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    pipe.ask(pipe.look(images["wide"]), Q, max_new_tokens=N)
    return pipe.last_result.token_ids


@pytest.mark.slow
@pytest.mark.xdist_group("memory")      # conftest.py: Ray clusters and memory soaks, one at a time
def test_two_replicas_answer_six_concurrent_requests(onnx_bundle, images, expected):
    before = ray_pids()
    srv = ServerProcess(onnx_bundle("phi3", "so400m"), "--ray", "--replicas", 2, "--port", 0,
                        "--max-queue", 4, "--ray-object-store-mb", 100, "--cpus-per-replica", 1, "--threads", 1,
                        ready_timeout=300)
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=180)
        model = client.models.list().data[0]
        assert model.model_extra["fusion"]["target"] == "onnx"
        url = data_url(images["wide"])
        barrier = threading.Barrier(6)

        def one(_):
            barrier.wait()
            raw = client.chat.completions.with_raw_response.create(model=model.id, messages=user(url, Q),
                                                                   max_tokens=N)
            body = raw.parse()
            assert raw.headers["x-fusion-replica"] == body.model_extra["fusion"]["replica"]
            return body.model_extra["fusion"]["replica"], body.model_extra["fusion"]["token_ids"]
        with cf.ThreadPoolExecutor(6) as ex:
            results = list(ex.map(one, range(6), timeout=300))
        assert [ids for _, ids in results] == [expected] * 6
        assert len({replica for replica, _ in results}) == 2, results          # both replicas served
        chunks = list(client.chat.completions.create(model=model.id, messages=user(url, Q), max_tokens=N,
                                                     stream=True))
        assert chunks[-1].model_extra["fusion"]["token_ids"] == expected
        with pytest.raises(openai.BadRequestError) as e:           # the same handler's errors, through Ray
            client.chat.completions.create(model=model.id, messages=user(url, Q), n=2)
        assert e.value.body["code"] == "unsupported"
        assert httpx.get(f"{srv.root}/health", timeout=30).json()["status"] == "ok"
        assert srv.stop() == 0, srv.output()
        assert "Traceback" not in srv.output(), srv.output()
    finally:
        srv.stop()
    # the cluster this command started is gone with it
    assert wait_until(lambda: ray_pids() <= before, 30), (ray_pids(), before)


def test_missing_ray_names_the_extra(monkeypatch):
    from fusion_edge.apps.serve.ray_app import import_ray
    from fusion_edge.runtime.errors import MissingExtraError
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` fails as if not installed
    with pytest.raises(MissingExtraError) as e:
        import_ray()
    assert e.value.extra == "ray" and "fusion-edge[ray]" in str(e.value)


def test_ray_options_need_ray(onnx_bundle):
    r = subprocess.run([sys.executable, "-m", "fusion_edge.cli", "serve", str(onnx_bundle("phi3", "so400m")),
                        "--replicas", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "add --ray" in r.stderr


def test_deployment_options_pass_autoscaling_through():
    import argparse

    from fusion_edge.apps.serve.cli import add_args
    from fusion_edge.apps.serve.ray_app import deployment_options
    p = argparse.ArgumentParser()
    add_args(p)
    args = p.parse_args(["b", "--ray", "--autoscaling", '{"min_replicas": 1, "max_replicas": 4}'])
    opts = deployment_options(args, cluster_gpus=2)
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4} and "num_replicas" not in opts
    assert opts["ray_actor_options"]["num_gpus"] == 1.0                  # one GPU per replica where there are GPUs
    opts = deployment_options(p.parse_args(["b", "--ray", "--replicas", "3"]), cluster_gpus=0)
    assert opts["num_replicas"] == 3 and opts["ray_actor_options"]["num_gpus"] == 0.0


@pytest.mark.slow
@pytest.mark.xdist_group("memory")      # conftest.py: Ray clusters and memory soaks, one at a time
def test_overload_on_ray_is_answered_or_refused_with_429(onnx_bundle, images, expected):
    """More concurrent requests than the fleet holds (2 replicas x (1 running + 1 waiting), 2 more
    waiting at Ray's proxy): each is answered or gets a 429 with Retry-After, all within the time
    limit; then the fleet serves, and /health counts its 2 running replicas. Ray's proxy refuses
    (plain text, --ray-retry-after); a replica's own 429 (OpenAI's shape) is accepted too, though
    Ray sends a replica no more than its queue holds."""
    before = ray_pids()
    srv = ServerProcess(onnx_bundle("phi3", "so400m"), "--ray", "--replicas", 2, "--port", 0, "--max-queue", 1,
                        "--ray-max-queued", 2, "--ray-retry-after", 3, "--ray-object-store-mb", 100,
                        "--cpus-per-replica", 1, "--threads", 1, ready_timeout=300)
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=180)
        model = client.models.list().data[0].id
        url = data_url(images["wide"])
        clients = 16
        barrier = threading.Barrier(clients)

        def one(_):
            barrier.wait()
            try:
                r = client.chat.completions.create(model=model, messages=user(url, Q), max_tokens=300)
                return "ok", r.model_extra["fusion"]["token_ids"][:N]
            except openai.RateLimitError as e:
                retry_after = int(e.response.headers["retry-after"])
                if isinstance(e.body, dict):
                    assert e.body["code"] == "queue_full" and e.body["type"] == "rate_limit_error", e.body
                    return "replica 429", retry_after
                assert "backpressure" in e.response.text and retry_after == 3, e.response.text
                return "ray 429", retry_after
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(clients) as ex:
            results = list(ex.map(one, range(clients), timeout=400))
        kinds = [kind for kind, _ in results]
        assert time.monotonic() - t0 < 400
        assert kinds.count("ok") >= 2 and kinds.count("ok") + kinds.count("replica 429") + kinds.count("ray 429") \
            == clients, kinds
        assert "ray 429" in kinds, kinds                     # the proxy's queue is bounded
        assert all(ids == expected for kind, ids in results if kind == "ok")
        assert all(s >= 1 for kind, s in results if kind != "ok")
        # serves afterwards, and /health speaks for the fleet as well as for the replica that answers
        again = client.chat.completions.create(model=model, messages=user(url, Q), max_tokens=N)
        assert again.model_extra["fusion"]["token_ids"] == expected
        health = httpx.get(f"{srv.root}/health", timeout=30).json()
        assert health["status"] == "ok" and health["fleet"]["replicas_running"] == 2, health
        assert health["fleet"]["status"] == "HEALTHY" and health["fleet"]["replica_states"] == {"RUNNING": 2}
        assert srv.stop() == 0, srv.output()
        assert "Traceback" not in srv.output(), srv.output()
    finally:
        srv.stop()
    assert wait_until(lambda: ray_pids() <= before, 30), (ray_pids(), before)


def _args(*argv):
    import argparse

    from fusion_edge.apps.serve.cli import add_args
    p = argparse.ArgumentParser()
    add_args(p)
    return p.parse_args(list(argv))


def test_the_proxy_queue_is_bounded_by_default():
    """A replica gets at most what it holds (max_ongoing_requests = --max-queue + 1); the proxy's queue
    (max_queued_requests) by default what the replicas hold (replicas x (--max-queue + 1); with
    autoscaling its max_replicas), then 429 + Retry-After (Ray's backpressure_config)."""
    from fusion_edge.apps.serve.ray_app import deployment_options
    opts = deployment_options(_args("b", "--ray", "--replicas", "3", "--max-queue", "4"), cluster_gpus=0)
    assert opts["max_ongoing_requests"] == 5 and opts["max_queued_requests"] == 15
    assert opts["backpressure_config"] == {"status_code": 429, "retry_after_s": 5.0}
    opts = deployment_options(_args("b", "--ray", "--autoscaling", '{"min_replicas": 1, "max_replicas": 4}'), 0)
    assert opts["max_queued_requests"] == 4 * (8 + 1)
    opts = deployment_options(_args("b", "--ray", "--ray-max-queued", "-1", "--ray-retry-after", "2.5"), 0)
    assert opts["max_queued_requests"] == -1 and opts["backpressure_config"]["retry_after_s"] == 2.5


@pytest.mark.parametrize("argv, says", [
    (["--ray", "--ray-max-queued", "0"], "-1 (no bound) or a positive number"),
    (["--ray-max-queued", "4"], "add --ray"),
    (["--ray-retry-after", "1"], "add --ray"),
])
def test_ray_queue_options_are_checked(onnx_bundle, argv, says):
    from fusion_edge.apps.serve.cli import check_args
    from fusion_edge.runtime.errors import OptionError
    with pytest.raises(OptionError) as e:
        check_args(_args(str(onnx_bundle("phi3", "so400m")), *argv))
    assert says in str(e.value)


def test_a_ray_without_backpressure_config_is_named(monkeypatch):
    """ray < 2.58 has max_queued_requests but answers it with 503 and no Retry-After: refused by name."""
    import ray

    from fusion_edge.apps.serve.ray_app import import_ray
    from fusion_edge.runtime.errors import FusionEdgeError
    monkeypatch.setattr(ray, "__version__", "2.57.1")
    with pytest.raises(FusionEdgeError) as e:
        import_ray()
    assert "ray 2.58 or newer" in str(e.value) and "2.57.1" in str(e.value)


def test_the_ray_extra_floor_is_the_version_the_code_needs():
    import re
    import tomllib
    from pathlib import Path

    from fusion_edge.apps.serve.ray_app import RAY_MIN_VERSION
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (spec,) = pyproject["project"]["optional-dependencies"]["ray"]
    floor = re.fullmatch(r"ray\[serve\]>=(\d+)\.(\d+)", spec)
    assert floor and tuple(map(int, floor.groups())) == RAY_MIN_VERSION, spec
