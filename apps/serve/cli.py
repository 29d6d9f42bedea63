"""`fusion-edge serve BUNDLE`: an OpenAI-compatible chat-completions API for a bundle.

Examples:
  fusion-edge serve b                                     http://127.0.0.1:8000/v1, this machine only
  fusion-edge serve b --host 0.0.0.0 --api-key "$KEY"     on the LAN (a key is required off loopback)
  fusion-edge serve b --allow-local-files ~/photos        file:// image URLs under that folder
  fusion-edge serve b --ray --replicas 2                  Ray Serve, a local cluster, one bundle per replica
  fusion-edge serve b --ray --address auto --autoscaling '{"min_replicas": 1, "max_replicas": 4}'
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

MB = 1024 * 1024


def add_args(p) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("bundle", help="exported bundle folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; any other address needs --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("FUSION_EDGE_API_KEY"),
                   help="key clients send as 'Authorization: Bearer KEY' (default: $FUSION_EDGE_API_KEY)")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting for the model beyond the running "
                   "one (default 8); more get 429 with Retry-After")
    p.add_argument("--model-id", default=None, help="the model name clients use (default: the bundle folder name)")
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime")
    p.add_argument("--strict", action="store_true", help="refuse a bundle whose verification was skipped, forced "
                   "or failed")
    p.add_argument("--allow-local-files", metavar="DIR", default=None,
                   help="accept file:// image URLs under DIR (symlinks resolved; nothing outside it)")
    p.add_argument("--allow-remote-images", action="store_true", help="accept http(s):// image URLs (fetched by "
                   "the server, with --max-image-mb and --remote-timeout)")
    p.add_argument("--remote-timeout", type=float, default=10.0, help="seconds to fetch a remote image (default 10)")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="encoded image size limit (default 20)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit (default 32)")
    p.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    p.add_argument("--max-prompt-chars", type=int, default=4000, help="question length limit in characters")
    p.add_argument("--scene-cache", type=int, default=8, help="images whose scene (global tiles) is kept")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages of this origin (repeatable; default: none)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="on SIGTERM: seconds to finish running requests before exiting (default 120)")
    r = p.add_argument_group("Ray Serve (pip install 'fusion-edge[ray]')")
    r.add_argument("--ray", action="store_true", help="deploy as a Ray Serve application, one bundle per replica")
    r.add_argument("--replicas", type=int, default=1, help="fixed replica count (default 1)")
    r.add_argument("--address", default=None, help="Ray cluster: auto | ray://HOST:PORT | HOST:PORT (default: start "
                   "a local one for this run)")
    r.add_argument("--autoscaling", default=None, metavar="JSON",
                   help="Ray Serve autoscaling_config, e.g. '{\"min_replicas\": 1, \"max_replicas\": 4, "
                        "\"target_ongoing_requests\": 2}' (replaces --replicas)")
    r.add_argument("--gpus-per-replica", type=float, default=None,
                   help="num_gpus of each replica (default: 1 where the cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-replica", type=float, default=1.0, help="num_cpus of each replica (default 1)")
    r.add_argument("--ray-object-store-mb", type=int, default=128,
                   help="object store of a local cluster started by this command (default 128)")


def check_args(args) -> None:
    from fusion_edge.apps.camera_qa.security import is_loopback
    from fusion_edge.runtime.errors import OptionError
    if not is_loopback(args.host) and not args.api_key:
        raise OptionError(f"listening on {args.host} (beyond this machine) needs an API key.",
                          "add --api-key KEY (or set FUSION_EDGE_API_KEY), or keep --host 127.0.0.1")
    positive = {"--max-tokens": args.max_tokens, "--default-max-tokens": args.default_max_tokens,
                "--max-prompt-chars": args.max_prompt_chars, "--scene-cache": args.scene_cache,
                "--max-image-mb": args.max_image_mb, "--max-body-mb": args.max_body_mb,
                "--remote-timeout": args.remote_timeout, "--replicas": args.replicas}
    bad = [k for k, v in positive.items() if v <= 0]
    if bad or args.max_queue < 0 or args.default_max_tokens > args.max_tokens:
        raise OptionError(f"{', '.join(bad) or '--max-queue / --default-max-tokens'} out of range.",
                          "pass positive numbers, --max-queue >= 0, --default-max-tokens <= --max-tokens")
    if args.allow_local_files and not Path(args.allow_local_files).is_dir():
        raise OptionError(f"--allow-local-files {args.allow_local_files} is not a folder.", "name an existing folder")
    if args.autoscaling is not None:
        autoscaling_config(args)
    if (args.replicas != 1 or args.autoscaling or args.address) and not args.ray:
        raise OptionError("--replicas, --autoscaling and --address deploy on Ray Serve.", "add --ray")


def autoscaling_config(args) -> dict | None:
    from fusion_edge.runtime.errors import OptionError
    if args.autoscaling is None:
        return None
    try:
        cfg = json.loads(args.autoscaling)
        if not isinstance(cfg, dict):
            raise ValueError
        return cfg
    except ValueError:
        raise OptionError("--autoscaling is not a JSON object.",
                          "e.g. --autoscaling '{\"min_replicas\": 1, \"max_replicas\": 4}'") from None


def settings_from_args(args):
    from .handler import ServeSettings
    from .images import ImageSettings
    from .request import Limits
    return ServeSettings(
        model_id=args.model_id or Path(args.bundle).resolve().name,
        limits=Limits(args.default_max_tokens, args.max_tokens, args.max_prompt_chars),
        images=ImageSettings(int(args.max_image_mb * MB),
                             Path(args.allow_local_files).resolve() if args.allow_local_files else None,
                             args.allow_remote_images, args.remote_timeout),
        scene_cache=args.scene_cache)


def open_pipeline(bundle: str, threads, strict: bool, devices: dict, log=print):
    from fusion_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.open(bundle, threads=threads, strict=strict, **devices)
    if pipe.verification_warning:
        log(f"warning: {pipe.verification_warning}")
    if pipe.device_notice:
        log(f"notice: {pipe.device_notice}")
    return pipe


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
