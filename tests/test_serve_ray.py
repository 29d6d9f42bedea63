"""`fusion-edge serve --ray`: the same API on Ray Serve, 2 replicas on a local cluster that the
command starts on 127.0.0.1 (small object store, --port 0: a free port) and stops on SIGTERM."""
from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import threading

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
