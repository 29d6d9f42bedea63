"""`fusion-edge ask`: one question about one image, from a checkpoint (PyTorch reference)
or a bundle (runtime pipeline), streamed to the terminal or printed as JSON."""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.option_types import check_existing_file, check_output_file
from fusion_edge.runtime.prompt import check_max_new_tokens
from fusion_edge.runtime.sampling import Sampler


def run_ask(args) -> int:
    stream = not args.json
    if args.logits_out:
        check_output_file(args.logits_out, "--logits-out", ".npy")    # before any work that a bad path would lose
    check_existing_file(args.image, "--image")                          # before the model loads
    # the options that need no model, before it loads; the rest (context, query_len) once its
    # config is read, before the image is encoded (check_ask)
    check_max_new_tokens(args.max_new_tokens)
    Sampler(args.temperature, args.top_p, args.top_k, args.seed)
    t0 = time.perf_counter()
    if args.model:
        result = _ask_reference(args, stream)
    else:
        result = _ask_bundle(args, stream)
    result["timings"]["total_s"] = time.perf_counter() - t0
    if args.logits_out:
        with open(args.logits_out, "wb") as f:     # a file object: np.save appends no second suffix
            np.save(f, np.asarray(result.pop("first_logits"), dtype=np.float32))
    else:
        result.pop("first_logits")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print()
    return 0


class _Printer:
    """on_token callback that streams decoded text; `.finish()` prints the held-back tail."""

    def __init__(self, tokenizer) -> None:
        from fusion_edge.runtime.tokenizer import StreamDecoder
        self._dec = StreamDecoder(tokenizer)

    def __call__(self, tok: int) -> None:
        sys.stdout.write(self._dec.push(tok))
        sys.stdout.flush()

    def finish(self) -> None:
        sys.stdout.write(self._dec.flush())


def _ask_reference(args, stream: bool) -> dict:
    from fusion_edge.export.reference import FusionReference
    ref = FusionReference.load(args.model)
    printer = _Printer(ref.tokenizer) if stream else None
    res = ref.answer(args.image, args.question, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                     query_len=args.query_len, image_tokens=args.image_tokens, on_token=printer)
    if printer is not None:
        printer.finish()
    return {"text": res.text, "token_ids": res.token_ids, "prompt": res.prompt, "backend": "pytorch-reference",
            "timings": res.timings, "first_logits": res.first_logits}


def _ask_bundle(args, stream: bool) -> dict:
    from fusion_edge.runtime.pipeline import Pipeline
    from fusion_edge.runtime.device_args import device_kwargs
    pipe = Pipeline.open(args.bundle, strict=args.strict, low_memory=args.low_memory, **device_kwargs(args))
    if pipe.verification_warning:
        print(f"warning: {pipe.verification_warning}", file=sys.stderr, flush=True)
    if pipe.device_notice:
        print(f"notice: {pipe.device_notice}", file=sys.stderr, flush=True)
    if args.image_tokens and args.image_tokens != pipe.image_tokens:
        raise ExportError(f"the bundle was exported with {pipe.image_tokens} image tokens, not {args.image_tokens}.",
                          f"re-export it with --image-tokens {args.image_tokens}, or leave --image-tokens out")
    pipe.check_ask(args.question, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, top_k=args.top_k, seed=args.seed, query_len=args.query_len)
    scene = pipe.look(args.image)
    pieces = pipe.ask(scene, args.question, stream=True, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                      query_len=args.query_len)
    for piece in pieces:
        if stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    r = pipe.last_result
    assert r is not None                    # set once the ask above has streamed its answer
    return {"text": r.text, "token_ids": r.token_ids, "prompt": r.prompt, "backend": pipe.backend_name,
            "timings": pipe.last_stats, "devices": pipe.devices, "device_notice": pipe.device_notice,
            "tf32": pipe.tf32, "tf32_parts": pipe.tf32_parts, "first_logits": r.first_logits,
            "verification": pipe.bundle.verification_status}
