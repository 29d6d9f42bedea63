"""The same API on Ray Serve: one bundle per replica, each replica its own Service (handler,
worker, metrics) behind the same FastAPI app (app.py), so request handling is written once.

`fusion-edge serve B --ray` connects to a cluster (--address auto | ray://HOST:PORT) or starts a
local one for the run (object store kept small), deploys `--replicas N` (or --autoscaling JSON,
passed to Ray Serve as is), puts each replica on its own GPU where the cluster has GPUs
(num_gpus=1: Ray sets CUDA_VISIBLE_DEVICES per replica) and serves on --host/--port through Ray's
HTTP proxy. SIGTERM deletes the application, whose replicas finish their running requests
(graceful_shutdown_timeout_s = --drain-timeout), then stops a cluster started here.
Every node needs fusion-edge with the `ray` extra and the bundle at the same path.

Overload: Ray sends a replica at most what its queue holds (max_ongoing_requests = --max-queue + 1);
with every replica full a request waits in the queue of Ray's HTTP proxy, which is bounded
(max_queued_requests = --ray-max-queued): beyond it Ray's proxy answers 429 with Retry-After
(backpressure_config, ray >= 2.58; its body is Ray's plain text, not OpenAI's JSON).
/health adds the fleet's replica counts from `serve.status()`.
"""
from __future__ import annotations

import signal
import sys
import threading

from fusion_edge.runtime.errors import MissingExtraError

from .settings import MB

APP_NAME = "fusion-edge"
RAY_MIN_VERSION = (2, 58)           # backpressure_config: a 429 with Retry-After from Ray's proxy queue
RAY_RETRY_AFTER_S = 5.0             # --ray-retry-after's default
FLEET_STATUS_TTL_S = 2.0            # /health asks Ray's controller at most this often per replica


def import_ray():
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(e.name or "ray", "ray", "`fusion-edge serve --ray`") from None
    if _version(ray.__version__) < RAY_MIN_VERSION:
        from fusion_edge.runtime.errors import FusionEdgeError
        need = ".".join(map(str, RAY_MIN_VERSION))
        raise FusionEdgeError(f"`fusion-edge serve --ray` needs ray {need} or newer (a 429 when Ray's queue is "
                              f"full); this is ray {ray.__version__}.",
                              f"pip install 'fusion-edge[ray]' (ray[serve]>={need}) on every node of the cluster")


def _version(text: str) -> tuple[int, ...]:
    import re
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def replica_config(args) -> dict:
    """Everything a replica needs to open its bundle and build its app (plain, picklable values)."""
    from fusion_edge.apps.camera_qa.security import is_loopback
    from fusion_edge.runtime.device_args import device_kwargs

    from .settings import settings_from_args
    return {"bundle": str(args.bundle), "threads": args.threads, "strict": args.strict,
            "devices": device_kwargs(args), "settings": settings_from_args(args), "max_queue": args.max_queue,
            "max_body_bytes": int(args.max_body_mb * MB), "api_key": args.api_key,
            "loopback_only": is_loopback(args.host), "cors": tuple(args.cors)}


def deployment(options: dict):
    """The Ray Serve deployment class (defined here so `ray` is imported only when used)."""
    from ray import serve

    @serve.deployment(**options)
    @serve.ingress()
    class FusionReplica:
        def __init__(self, cfg: dict):
            from .app import Service
            from .settings import open_pipeline
            ctx = serve.get_replica_context()
            replica = f"{ctx.replica_id.deployment_id.name}#{ctx.replica_id.unique_id}"
            pipe = open_pipeline(cfg["bundle"], cfg["threads"], cfg["strict"], cfg["devices"])
            self.cfg = cfg
            self.service = Service.start(pipe, cfg["settings"], cfg["max_queue"], cfg["max_body_bytes"], replica,
                                         fleet=FleetStatus(ctx.app_name, ctx.deployment))

        def __serve_build_asgi_app__(self):
            from .app import create_app
            c = self.cfg
            return create_app(self.service, c["api_key"], c["loopback_only"], c["cors"])

    return FusionReplica


class FleetStatus:
    """The deployment's replicas by state, from Ray's controller (`serve.status()`), for /health;
    asked at most every FLEET_STATUS_TTL_S seconds. Blocking: call it from a thread."""

    def __init__(self, app: str, deployment: str):
        self.app, self.deployment = app, deployment
        self._at = -1e9
        self._value: dict = {}

    def __call__(self) -> dict:
        import time
        if time.monotonic() - self._at > FLEET_STATUS_TTL_S:
            self._value, self._at = self._ask(), time.monotonic()
        return self._value

    def _ask(self) -> dict:
        from ray import serve
        try:
            d = serve.status().applications[self.app].deployments[self.deployment]
        except Exception as e:  # noqa: BLE001 — the controller unreachable or the app being deleted
            return {"error": f"Ray Serve's status is not available ({type(e).__name__}: {str(e)[:200]})"}
        states = {str(getattr(k, "value", k)): n for k, n in d.replica_states.items() if n}
        return {"status": str(getattr(d.status, "value", d.status)), "replicas_running": states.get("RUNNING", 0),
                "replica_states": states}


def deployment_options(args, cluster_gpus: float) -> dict:
    from .settings import autoscaling_config
    gpus = args.gpus_per_replica if args.gpus_per_replica is not None else (1.0 if cluster_gpus > 0 else 0.0)
    # what a replica holds (1 running + --max-queue waiting): Ray sends a replica no more than that,
    # so a request never meets a full replica while another has room (Ray's queue-length probes
    # time out on busy CPUs, and a request would then go to a full replica and get its 429)
    per_replica = args.max_queue + 1
    opts = {"name": "fusion", "ray_actor_options": {"num_cpus": args.cpus_per_replica, "num_gpus": gpus},
            "max_ongoing_requests": per_replica,
            "graceful_shutdown_timeout_s": args.drain_timeout, "graceful_shutdown_wait_loop_s": 0.5,
            "health_check_period_s": 5.0}
    autoscaling = autoscaling_config(args)
    if autoscaling is not None:
        opts["autoscaling_config"] = autoscaling
        replicas = autoscaling.get("max_replicas", 1)
        replicas = replicas if isinstance(replicas, (int, float)) and replicas >= 1 else 1   # else Ray says why
    else:
        opts["num_replicas"] = replicas = args.replicas
    # every replica full: each HTTP proxy holds this many more (counted while they are being routed,
    # so a burst below the replicas' capacity must fit too), then answers 429 with Retry-After
    queued = args.ray_max_queued if args.ray_max_queued is not None else int(replicas) * per_replica
    opts["max_queued_requests"] = queued
    opts["backpressure_config"] = {"status_code": 429, "retry_after_s": (
        args.ray_retry_after if args.ray_retry_after is not None else RAY_RETRY_AFTER_S)}
    return opts


def free_port(host: str) -> int:
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_ray(args) -> int:
    import_ray()
    from .app import import_web
    import_web()                      # the replicas build the same FastAPI app
    import ray
    from ray import serve

    from fusion_edge.runtime.errors import FusionEdgeError
    say = lambda m: print(m, file=sys.stderr, flush=True)
    local = args.address is None
    if local:
        n_cpus = max(2, int(args.replicas * args.cpus_per_replica + 0.999))
        ray.init(num_cpus=n_cpus, object_store_memory=args.ray_object_store_mb * MB, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        opts = deployment_options(args, ray.cluster_resources().get("GPU", 0))
        if args.port == 0:            # Ray's proxy takes a fixed port: pick a free one here
            args.port = free_port(args.host)
        serve.start(http_options={"host": args.host, "port": args.port})
        say(f"deploying {args.bundle} on Ray Serve: {opts.get('autoscaling_config') or opts['num_replicas']} "
            f"replica(s), {opts['ray_actor_options']} each, {opts['max_ongoing_requests']} requests at a time "
            f"each, {opts['max_queued_requests']} more waiting at each HTTP proxy …")
        try:
            serve.run(deployment(opts).bind(replica_config(args)), name=APP_NAME, route_prefix="/")
        except Exception as e:  # noqa: BLE001 — a replica that fails to start: its message, not Ray's trace
            raise FusionEdgeError(f"the Ray Serve deployment failed: {str(e).strip().splitlines()[-1][:500]}",
                                  "check the bundle path on every node and the replica logs "
                                  "(/tmp/ray/session_latest/logs/serve)") from None
        h = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        h = f"[{h}]" if ":" in h else h
        print(f"serving {replica_config(args)['settings'].model_id} on Ray Serve at http://{h}:{args.port}/v1",
              flush=True)
        stop.wait()
        say("stopping: the replicas finish their running requests …")
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()
    say("stopped")
    return 0
