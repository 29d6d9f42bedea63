"""`fusion-edge camera BUNDLE --source SRC`: live camera question answering in the browser.

Examples:
  fusion-edge camera b --source clip.mp4                      laptop, a looping video file
  fusion-edge camera b --source csi://0                       Jetson CSI camera
  fusion-edge camera b --source /dev/video0 --host 0.0.0.0    USB camera, reachable on the LAN (token)
  fusion-edge camera b --source 0 --no-browser --watch "Is anyone there?" --interval 10
"""
from __future__ import annotations

import logging
import sys

from fusion_edge.runtime import option_types as ot

from .watch import MAX_INTERVAL_S, MIN_INTERVAL_S


def add_args(p) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("bundle", help="exported bundle folder (onnx or gguf target)")
    p.add_argument("--source", required=True,
                   help="csi://N | /dev/videoN | N | rtsp://… | video file (loops) | image folder (slideshow)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "any other address needs an access token)")
    p.add_argument("--port", type=ot.port_arg(), default=8080, help="port (0 = any free port)")
    p.add_argument("--token", default=None, help="access token (generated and printed when --host is not loopback)")
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(p)
    p.add_argument("--threads", type=ot.threads_arg(), default=None,
                   help=f"CPU threads for onnxruntime (1 to {ot.MAX_THREADS}; default: every core)")
    p.add_argument("--max-new-tokens", type=ot.int_arg("--max-new-tokens", 1), default=64,
                   help="most tokens per answer (1 to the model's context; a question may ask for fewer)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a bundle whose verification was skipped (--no-verify), forced or failed")
    p.add_argument("--temperature", type=ot.float_arg("--temperature", 0), default=0.0,
                   help="0 = greedy (default); a finite number >= 0")
    p.add_argument("--max-question-chars", type=ot.int_arg("--max-question-chars", 1), default=500)
    p.add_argument("--max-upload-mb", type=ot.float_arg("--max-upload-mb", 0, low_open=True), default=8.0)
    p.add_argument("--max-fps", type=ot.float_arg("--max-fps", 0, low_open=True), default=15.0,
                   help="frames per second taken from the source (default 15)")
    p.add_argument("--slide-seconds", type=ot.float_arg("--slide-seconds", 0, low_open=True), default=3.0,
                   help="seconds per image for a folder source")
    p.add_argument("--watch", default=None, metavar="QUESTION", help="start watch mode with this question")
    p.add_argument("--interval", type=ot.float_arg("--interval"), default=5.0,
                   help=f"watch interval in seconds ({MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g})")
    p.add_argument("--no-browser", action="store_true",
                   help="no web server: print the --watch question's answers to the terminal")
    p.add_argument("--max-answers", type=ot.int_arg("--max-answers", 1), default=None,
                   help="with --no-browser: stop after this many answers (default: until Ctrl-C)")
    p.add_argument("--log", default=None, metavar="FILE", type=ot.output_file_arg("--log"),
                   help="append questions, answers and stats as JSON lines")


def settings_from_args(args):
    from .app import Settings
    return Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    max_question_chars=args.max_question_chars,
                    max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                    max_fps=args.max_fps, slide_seconds=args.slide_seconds)


def run(args) -> int:
    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.errors import PromptError
    from fusion_edge.runtime.pipeline import bundle_context
    from fusion_edge.runtime.prompt import check_max_new_tokens
    from . import heap
    from .security import resolve_token
    from .sources import parse_source
    from .watch import parse_interval

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.no_browser:
        from .server import import_web
        import_web()                     # the camera extra first: without it no other check helps
    if args.no_browser and not args.watch:
        raise PromptError("--no-browser prints the watch question's answers, but no --watch question was given.",
                          "add --watch 'What do you see?' (and --interval SECONDS)")
    # every setting checked before the model loads (the types checked the rest while parsing)
    parse_interval(args.interval)
    settings = settings_from_args(args)
    check_max_new_tokens(args.max_new_tokens, *bundle_context(Bundle.open(args.bundle, check_hashes=False)))
    spec = parse_source(args.source)
    token, generated = resolve_token(args.host, args.token)
    sock = None
    if not args.no_browser:
        from .server import bind
        sock = bind(args.host, args.port)    # before loading: a taken port fails at once
    heap.configure()                     # before the model and the app's threads start (heap.py)
    cam = _open_app(args, spec, settings)
    log_file = _attach_log(cam, args.log, spec.label)
    try:
        if args.watch and not args.no_browser:
            cam.set_watch(True, args.watch, args.interval)
        if args.no_browser:
            from .headless import run_headless
            return run_headless(cam, args.watch, args.interval, args.max_answers)
        from .server import serve
        serve(cam, args.host, args.port, token, on_ready=lambda url: _announce(url, args.host, generated), sock=sock)
        return 0
    finally:
        cam.stop()
        if log_file is not None:
            log_file.close()


def _open_app(args, spec, settings):
    from fusion_edge.runtime.pipeline import Pipeline
    from .app import CameraApp
    print(f"loading {args.bundle} …", file=sys.stderr, flush=True)
    from fusion_edge.runtime.device_args import device_kwargs
    pipe = Pipeline.open(args.bundle, threads=args.threads, strict=args.strict, **device_kwargs(args))
    if pipe.verification_warning:
        print(f"warning: {pipe.verification_warning}", file=sys.stderr, flush=True)
    if pipe.device_notice:
        print(f"notice: {pipe.device_notice}", file=sys.stderr, flush=True)
    print(f"model: {pipe.backend_name} on {_devices_text(pipe.devices)}; source: {spec.label}",
          file=sys.stderr, flush=True)
    return CameraApp(pipe, spec, settings).start()


def _attach_log(cam, path, label):
    if not path:
        return None
    from .jsonlog import JsonLog
    log_file = JsonLog(path, label)
    cam.hub.subscribe(log_file)
    return log_file


def _announce(url: str, host: str, generated: bool) -> None:
    print(f"camera QA ready: open {url}", flush=True)
    if host in ("0.0.0.0", "::"):
        print("  (listening on all interfaces: from another device use this machine's address instead of "
              "127.0.0.1)", flush=True)
    if generated:
        print("  an access token was generated for this run (pass --token to choose one)", flush=True)


def _devices_text(devices: dict) -> str:
    return ", ".join(f"{part} {dev}" for part, dev in devices.items())
