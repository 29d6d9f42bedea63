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


def add_args(p) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("bundle", help="exported bundle folder (onnx or gguf target)")
    p.add_argument("--source", required=True,
                   help="csi://N | /dev/videoN | N | rtsp://… | video file (loops) | image folder (slideshow)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "any other address needs an access token)")
    p.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")
    p.add_argument("--token", default=None, help="access token (generated and printed when --host is not loopback)")
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--strict", action="store_true",
                   help="refuse a bundle whose verification was skipped (--no-verify), forced or failed")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-question-chars", type=int, default=500)
    p.add_argument("--max-upload-mb", type=float, default=8.0)
    p.add_argument("--max-fps", type=float, default=15.0, help="frames per second taken from the source (default 15)")
    p.add_argument("--slide-seconds", type=float, default=3.0, help="seconds per image for a folder source")
    p.add_argument("--watch", default=None, metavar="QUESTION", help="start watch mode with this question")
    p.add_argument("--interval", type=float, default=5.0, help="watch interval in seconds")
    p.add_argument("--no-browser", action="store_true",
                   help="no web server: print the --watch question's answers to the terminal")
    p.add_argument("--max-answers", type=int, default=None, help="with --no-browser: stop after this many answers")
    p.add_argument("--log", default=None, metavar="FILE", help="append questions, answers and stats as JSON lines")


def settings_from_args(args):
    from .app import Settings
    return Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    max_question_chars=args.max_question_chars,
                    max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                    max_fps=args.max_fps, slide_seconds=args.slide_seconds)


def run(args) -> int:
    from fusion_edge.runtime.errors import PromptError
    from . import heap
    from .security import resolve_token
    from .sources import parse_source

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.no_browser and not args.watch:
        raise PromptError("--no-browser prints the watch question's answers, but no --watch question was given.",
                          "add --watch 'What do you see?' (and --interval SECONDS)")
    if min(args.max_new_tokens, args.max_question_chars, args.max_fps, args.slide_seconds, args.max_upload_mb) <= 0:
        raise PromptError("--max-new-tokens, --max-question-chars, --max-fps, --slide-seconds and --max-upload-mb "
                          "must be positive.", "pass positive numbers")
    spec = parse_source(args.source)
    if not args.no_browser:
        from .server import import_web
        import_web()                     # fail before the model loads when the extra is missing
    token, generated = resolve_token(args.host, args.token)
    heap.configure()                     # before the model and the app's threads start (heap.py)
    cam = _open_app(args, spec)
    log_file = _attach_log(cam, args.log, spec.label)
    try:
        if args.watch and not args.no_browser:
            cam.set_watch(True, args.watch, args.interval)
        if args.no_browser:
            from .headless import run_headless
            return run_headless(cam, args.watch, args.interval, args.max_answers)
        from .server import serve
        serve(cam, args.host, args.port, token, on_ready=lambda url: _announce(url, args.host, generated))
        return 0
    finally:
        cam.stop()
        if log_file is not None:
            log_file.close()


def _open_app(args, spec):
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
    return CameraApp(pipe, spec, settings_from_args(args)).start()


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
