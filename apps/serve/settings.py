"""What `fusion-edge serve` builds from its arguments, shared by the single-process server
(cli.py) and the Ray Serve replicas (ray_app.py): the autoscaling config, the request-handling
settings and the opened pipeline. A leaf of apps/serve: cli and ray_app both import it."""
from __future__ import annotations

import json
from pathlib import Path

from fusion_edge.runtime import option_types as ot

MB = 1024 * 1024


def autoscaling_config(args) -> dict | None:
    from fusion_edge.runtime.errors import OptionError
    if args.autoscaling is None:
        return None
    example = "e.g. --autoscaling '{\"min_replicas\": 1, \"max_replicas\": 4}'"
    try:
        cfg = json.loads(args.autoscaling)
        if not isinstance(cfg, dict):
            raise ValueError
    except ValueError:
        raise OptionError("--autoscaling is not a JSON object.", example) from None
    for key, value in cfg.items():           # Ray checks the fields once deployed; numbers are checked here
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ot.check_float(value, f"--autoscaling {key}", 0, fix=f"give {key} a finite number >= 0; {example}")
    lo, hi = cfg.get("min_replicas", 1), cfg.get("max_replicas", 1)
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        raise OptionError(f"--autoscaling min_replicas {lo} is more than max_replicas {hi}.", example)
    return cfg


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
