"""`fusion-edge serve BUNDLE`: an OpenAI-compatible chat-completions API for a bundle.

Examples:
  fusion-edge serve b                                     http://127.0.0.1:8000/v1, this machine only
  fusion-edge serve b --host 0.0.0.0 --api-key "$KEY"     on the LAN (a key is required off loopback)
  fusion-edge serve b --allow-local-files ~/photos        file:// image URLs under that folder
  fusion-edge serve b --ray --replicas 2                  Ray Serve, a local cluster, one bundle per replica
  fusion-edge serve b --ray --address auto --autoscaling '{"min_replicas": 1, "max_replicas": 4}'
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from fusion_edge.runtime import option_types as ot

from .settings import MB, autoscaling_config, open_pipeline, settings_from_args

RAY_MIN_OBJECT_STORE_MB = 75          # Ray refuses less (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES)


def add_args(p) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("bundle", help="exported bundle folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; any other address needs --api-key)")
    p.add_argument("--port", type=ot.port_arg(), default=8000, help="port (0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("FUSION_EDGE_API_KEY"),
                   help="key clients send as 'Authorization: Bearer KEY' (default: $FUSION_EDGE_API_KEY)")
    p.add_argument("--max-queue", type=ot.int_arg("--max-queue", 0), default=8,
                   help="requests waiting for the model beyond the running "
                   "one (default 8); more get 429 with Retry-After")
    p.add_argument("--model-id", default=None, help="the model name clients use (default: the bundle folder name)")
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(p)
    p.add_argument("--threads", type=ot.threads_arg(), default=None,
                   help=f"CPU threads for onnxruntime (1 to {ot.MAX_THREADS}; default: every core)")
    p.add_argument("--strict", action="store_true", help="refuse a bundle whose verification was skipped, forced "
                   "or failed")
    p.add_argument("--allow-local-files", metavar="DIR", default=None,
                   type=ot.existing_dir_arg("--allow-local-files"),
                   help="accept file:// image URLs under DIR (symlinks resolved; nothing outside it)")
    p.add_argument("--allow-remote-images", action="store_true", help="accept http(s):// image URLs (fetched by "
                   "the server, with --max-image-mb and --remote-timeout)")
    p.add_argument("--remote-timeout", type=ot.float_arg("--remote-timeout", 0, low_open=True), default=10.0,
                   help="seconds to fetch a remote image (default 10)")
    p.add_argument("--max-image-mb", type=ot.float_arg("--max-image-mb", 0, low_open=True), default=20.0,
                   help="encoded image size limit (default 20)")
    p.add_argument("--max-body-mb", type=ot.float_arg("--max-body-mb", 0, low_open=True), default=32.0,
                   help="request body limit (default 32)")
    p.add_argument("--max-tokens", type=ot.int_arg("--max-tokens", 1), default=1024,
                   help="the largest max_tokens a request may ask for (1 to the model's context)")
    p.add_argument("--default-max-tokens", type=ot.int_arg("--default-max-tokens", 1), default=256,
                   help="max_tokens when a request gives none (at most --max-tokens)")
    p.add_argument("--max-prompt-chars", type=ot.int_arg("--max-prompt-chars", 1), default=4000,
                   help="question length limit in characters")
    p.add_argument("--scene-cache", type=ot.int_arg("--scene-cache", 1), default=8,
                   help="images whose scene (global tiles) is kept")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages of this origin (repeatable; default: none)")
    p.add_argument("--drain-timeout", type=ot.float_arg("--drain-timeout", 0), default=120.0,
                   help="on SIGTERM: seconds to finish running requests before exiting (default 120; 0 = none)")
    r = p.add_argument_group("Ray Serve (pip install 'fusion-edge[ray]')")
    r.add_argument("--ray", action="store_true", help="deploy as a Ray Serve application, one bundle per replica")
    r.add_argument("--replicas", type=ot.int_arg("--replicas", 1), default=1, help="fixed replica count (default 1)")
    r.add_argument("--address", default=None, help="Ray cluster: auto | ray://HOST:PORT | HOST:PORT (default: start "
                   "a local one for this run)")
    r.add_argument("--autoscaling", default=None, metavar="JSON",
                   help="Ray Serve autoscaling_config, e.g. '{\"min_replicas\": 1, \"max_replicas\": 4, "
                        "\"target_ongoing_requests\": 2}' (replaces --replicas)")
    r.add_argument("--gpus-per-replica", type=ot.float_arg("--gpus-per-replica", 0), default=None,
                   help="num_gpus of each replica (default: 1 where the cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-replica", type=ot.float_arg("--cpus-per-replica", 0, low_open=True), default=1.0,
                   help="num_cpus of each replica (default 1)")
    r.add_argument("--ray-object-store-mb", type=ot.int_arg("--ray-object-store-mb", RAY_MIN_OBJECT_STORE_MB),
                   default=128,
                   help="object store of a local cluster started by this command (default 128)")
    r.add_argument("--ray-max-queued", type=ot.int_arg("--ray-max-queued", -1), default=None, metavar="N",
                   help="requests each Ray HTTP proxy holds while every replica is full; more get 429 with "
                        "Retry-After (default: what the replicas hold, replicas x (--max-queue + 1), with "
                        "--autoscaling its max_replicas; -1 = no bound)")
    r.add_argument("--ray-retry-after", type=ot.float_arg("--ray-retry-after", 0), default=None, metavar="S",
                   help="the Retry-After seconds of those 429s (default 5)")


SCENE_MEMORY = 0.5      # of the memory available at start: what the scene cache may fill at most


def check_scene_cache(n: int, cfg) -> None:
    """--scene-cache N: N scenes of this model must fit in SCENE_MEMORY of the available memory
    (each new image fills one more until N are kept, so N is a memory promise)."""
    from fusion_edge.runtime.errors import OptionError
    from fusion_edge.runtime.memory import available_bytes
    from fusion_edge.runtime.pipeline import scene_bytes
    each, avail = scene_bytes(cfg), available_bytes()
    if avail is not None and n * each > SCENE_MEMORY * avail:
        fits = max(1, int(SCENE_MEMORY * avail // each))
        raise OptionError(f"--scene-cache {n} would keep up to {n * each / 2**30:.1f} GiB of scenes "
                          f"({each / 2**20:.1f} MiB each for this model); this machine has {avail / 2**30:.1f} GiB "
                          "available.", f"pass --scene-cache {fits} or less")


def check_args(args) -> None:
    from fusion_edge.apps.camera_qa.security import is_loopback
    from fusion_edge.runtime.errors import OptionError
    if not is_loopback(args.host) and not args.api_key:
        raise OptionError(f"listening on {args.host} (beyond this machine) needs an API key.",
                          "add --api-key KEY (or set FUSION_EDGE_API_KEY), or keep --host 127.0.0.1")
    # each value's range is its type's (runtime/option_types.py, checked while parsing); here what
    # involves two options or the bundle, before the model loads
    if args.default_max_tokens > args.max_tokens:
        raise OptionError(f"--default-max-tokens {args.default_max_tokens} is more than --max-tokens "
                          f"{args.max_tokens}.", "pass --default-max-tokens at most --max-tokens")
    if not (args.ray and args.address):       # the bundle is on this machine (a remote cluster's replicas check)
        from fusion_edge.runtime.bundle import Bundle
        from fusion_edge.runtime.pipeline import bundle_context
        from fusion_edge.runtime.prompt import check_max_new_tokens
        bundle = Bundle.open(args.bundle, check_hashes=False)
        check_max_new_tokens(args.max_tokens, *bundle_context(bundle), name="--max-tokens", option="--max-tokens")
        check_scene_cache(args.scene_cache, bundle.config)
    if args.autoscaling is not None:
        autoscaling_config(args)
    ray_only = args.ray_max_queued is not None or args.ray_retry_after is not None
    if (args.replicas != 1 or args.autoscaling or args.address or ray_only) and not args.ray:
        raise OptionError("--replicas, --autoscaling, --address, --ray-max-queued and --ray-retry-after deploy on "
                          "Ray Serve.", "add --ray")
    if args.ray_max_queued == 0:
        raise OptionError("--ray-max-queued 0: Ray Serve takes -1 (no bound) or a positive number.",
                          "pass --ray-max-queued 1 or more, or leave it out (the replicas' capacity)")


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    check_args(args)
    if args.ray:
        from .ray_app import run_ray
        return run_ray(args)
    from .app import Service, create_app, import_web
    import_web()                      # before the model loads: a missing extra fails at once
    from fusion_edge.apps.camera_qa.security import is_loopback
    from fusion_edge.apps.camera_qa.server import bind
    from fusion_edge.runtime.device_args import device_kwargs
    sock = bind(args.host, args.port)   # before loading: a taken port fails at once
    say = lambda m: print(m, file=sys.stderr, flush=True)
    say(f"loading {args.bundle} …")
    pipe = open_pipeline(args.bundle, args.threads, args.strict, device_kwargs(args), say)
    service = Service.start(pipe, settings_from_args(args), args.max_queue, int(args.max_body_mb * MB))
    app = create_app(service, args.api_key, is_loopback(args.host), tuple(args.cors))
    return serve_app(app, service, sock, args)


def serve_app(app, service, sock, args) -> int:
    """Run until SIGTERM / Ctrl-C: uvicorn stops listening and lets running requests finish
    (--drain-timeout), then the worker drains what it took and the process exits 0."""
    import uvicorn
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=args.drain_timeout, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM / SIGINT while serving and re-raises the signal once it has stopped;
    # these no-op handlers take that re-raise, so the drain below runs and the exit code is 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    port = sock.getsockname()[1]
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    h = f"[{host}]" if ":" in host else host
    print(f"serving {service.handler.settings.model_id} ({service.handler.pipe.backend_name} on "
          f"{', '.join(f'{k} {v}' for k, v in service.handler.pipe.devices.items())}) at http://{h}:{port}/v1",
          flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        finished = service.scheduler.drain(args.drain_timeout)
        print("stopped" if finished else "stopped (some requests did not finish in time)", file=sys.stderr,
              flush=True)
    return 0
