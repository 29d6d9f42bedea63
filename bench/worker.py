"""Measure ONE backend in its own process (so peak RSS and imports are its own).

    python -m fusion_edge.bench.worker --out DIR (--reference CHECKPOINT | --bundle B)
        --images A.jpg B.jpg --questions-per-image K --max-new-tokens M
        --repeats R --warmup W --threads T [--device cpu] [--query-len Q]

Writes DIR/result.json (raw samples, answers, sizes) and DIR/first_logits.npy
((cases*K, V) float32, the first generated step of each question, for the fidelity
figures). The reference runs eager fp32 PyTorch with T threads; a bundle runs through
`Pipeline.open` exactly as users run it (any target: the manifest decides the engines).
Nothing in the runtime is changed: figures it does not report are timed around calls.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cases import questions_for
from .weights import bundle_llm_bytes_per_token, disk_bytes, torch_llm_bytes_per_token

if TYPE_CHECKING:
    from .native_runner import NativeRunner

# Figures sampled per image (fresh frame) and per question.
IMAGE_FIGURES = ("preprocess_s", "vision_global_s", "ttft_s")
QUESTION_FIGURES = ("vision_main_s", "prefill_s", "followup_ttft_s", "decode_tokens_per_s")


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM of /proc/self/status — NOT
    ru_maxrss, which a forked child inherits from its parent (the bench process with its
    bandwidth-probe arrays) as a floor that survives exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024          # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024              # macOS: bytes, others: KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class BundleRunner:
    """A bundle through the runtime pipeline."""

    def __init__(self, path: str, threads: int, devices: dict, query_len: int | None):
        """devices: Pipeline.open's device keywords (device, vision_device, …, tf32)."""
        from fusion_edge.runtime.pipeline import Pipeline
        self.pipe = Pipeline.open(path, threads=threads, **devices)
        self.query_len = query_len
        m = self.pipe.bundle.manifest
        llm = bundle_llm_bytes_per_token(path, m)
        self.info = {"kind": "bundle", "name": f"{m['target']}-{m['precision']}", "path": str(path),
                     "target": m["target"], "precision": m["precision"],
                     "llm_backend": m.get("llm_backend", "onnxruntime"), "device": self.pipe.device,
                     "devices": self.pipe.devices, "tf32": self.pipe.tf32, "tf32_parts": self.pipe.tf32_parts,
                     "decode_graph": "decode" in m.components,     # one run per token (ONNX)
                     "llm_bytes_per_token": llm["bytes"], "llm_bytes_method": llm["method"],
                     "disk_bytes": disk_bytes(path), "verification": self.pipe.bundle.verification_status,
                     "verification_warning": self.pipe.verification_warning}

    def look(self, image):
        t0 = time.perf_counter()
        scene = self.pipe.look(image)
        look_s = time.perf_counter() - t0
        return scene, {"preprocess_s": scene.stats["preprocess_s"],
                       "vision_global_s": scene.stats["vision_global_s"], "look_s": look_s}

    def ask(self, scene, question: str, max_new: int) -> dict:
        self.pipe.ask(scene, question, max_new_tokens=max_new, query_len=self.query_len)
        s, r = self.pipe.last_stats, self.pipe.last_result
        assert r is not None                # set by the ask above
        return {"vision_main_s": s["vision_main_s"], "prefill_s": s["prefill_s"], "ttft_s": s["ttft_s"],
                "decode_s": s["decode_s"], "new_tokens": s["new_tokens"], "prompt_tokens": s["prompt_tokens"],
                "token_ids": list(r.token_ids), "text": r.text, "first_logits": r.first_logits}


REFERENCE_DTYPES = ("fp32", "bf16")


class ReferenceRunner:
    """The PyTorch reference (eager; fp32, or bf16 where fp32 does not fit in memory). `look`
    is composed from its parts so that preprocessing and the global tiles are timed separately."""

    def __init__(self, model: str, threads: int, query_len: int | None, dtype: str = "fp32"):
        import torch
        torch.set_num_threads(threads)
        from fusion_edge.export.reference import FusionReference
        self.ref = FusionReference.load(model, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
        self.query_len = query_len
        self.info = {"kind": "reference", "name": "pytorch-reference" + ("" if dtype == "fp32" else f"-{dtype}"),
                     "path": str(model),
                     "target": "pytorch", "precision": dtype, "llm_backend": "torch", "device": "cpu",
                     "devices": {"vision": "cpu", "align": "cpu", "llm": "cpu"}, "tf32": False,
                     "torch_threads": torch.get_num_threads(),
                     "llm_bytes_per_token": torch_llm_bytes_per_token(self.ref.model.llm),
                     "llm_bytes_method": "fp32 parameters + one embedding row",
                     "disk_bytes": disk_bytes(self.ref.ckpt.folder)}

    def look(self, image):
        from fusion_edge.export.reference import RefScene
        from fusion_edge.runtime.preprocess import static_hd_tiles
        t0 = time.perf_counter()
        tiles = static_hd_tiles(image, self.ref.cfg.tower.image_size)
        t1 = time.perf_counter()
        grid = self.ref.encode_global(tiles.global_tiles)
        t2 = time.perf_counter()
        return RefScene(tiles, grid), {"preprocess_s": t1 - t0, "vision_global_s": t2 - t1, "look_s": t2 - t0}

    def ask(self, scene, question: str, max_new: int) -> dict:
        res = self.ref.ask(scene, question, max_new_tokens=max_new, query_len=self.query_len)
        t = res.timings
        return {"vision_main_s": t["vision_main_s"], "prefill_s": t["prefill_s"],
                "ttft_s": t["vision_main_s"] + t["prefill_s"], "decode_s": t["decode_s"],
                "new_tokens": t["new_tokens"], "prompt_tokens": t["prompt_tokens"],
                "token_ids": list(res.token_ids), "text": res.text, "first_logits": res.first_logits}


def decode_rate(q: dict) -> float | None:
    """Decode tokens/s: the steps after the prefill's token over the decode time (as the
    pipeline's own `decode_tokens_per_s`); None when fewer than 2 tokens came out."""
    steps = q["new_tokens"] - 1
    return steps / q["decode_s"] if steps > 0 and q["decode_s"] > 0 else None


def measure(runner, images: list[str], per_image: int, max_new: int, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):                       # excluded: first-call allocations, caches
        scene, _ = runner.look(images[0])
        runner.ask(scene, questions_for(0, per_image)[0], max_new)
    samples: dict[str, list[float]] = {k: [] for k in IMAGE_FIGURES + QUESTION_FIGURES}
    answers, logits, prompt_tokens, new_tokens = [], [], [], []
    for rep in range(repeats):
        for case, image in enumerate(images):
            scene, look = runner.look(image)
            samples["preprocess_s"].append(look["preprocess_s"])
            samples["vision_global_s"].append(look["vision_global_s"])
            for j, question in enumerate(questions_for(case, per_image)):
                q = runner.ask(scene, question, max_new)
                samples["vision_main_s"].append(q["vision_main_s"])
                samples["prefill_s"].append(q["prefill_s"])
                if j == 0:     # a fresh image: the whole look + this question
                    samples["ttft_s"].append(look["look_s"] + q["ttft_s"])
                else:          # a follow-up on the cached scene
                    samples["followup_ttft_s"].append(q["ttft_s"])
                rate = decode_rate(q)
                if rate is not None:
                    samples["decode_tokens_per_s"].append(rate)
                prompt_tokens.append(q["prompt_tokens"])
                new_tokens.append(q["new_tokens"])
                if rep == 0:
                    answers.append({"case": case, "question": question, "token_ids": q["token_ids"],
                                    "text": q["text"]})
                    logits.append(np.asarray(q["first_logits"], np.float32))
    return {"samples": samples, "answers": answers, "first_logits": np.stack(logits),
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion_edge.bench.worker", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--reference", help="checkpoint folder: run the PyTorch reference")
    src.add_argument("--bundle", help="bundle folder: run it through Pipeline.open")
    src.add_argument("--native", help="gguf bundle folder: run it through the native runtime (bench/native_runner.py)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--questions-per-image", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, required=True)
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(p, default="cpu")
    p.add_argument("--query-len", type=int, default=None)
    p.add_argument("--reference-dtype", choices=REFERENCE_DTYPES, default="fp32")
    args = p.parse_args(argv)
    from fusion_edge.runtime.device_args import device_kwargs
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"ok": False, "threads": args.threads}
    try:
        t0 = time.perf_counter()
        runner: NativeRunner | ReferenceRunner | BundleRunner
        if args.native:
            from .native_runner import NativeRunner
            runner = NativeRunner(args.native, args.threads, args.device, args.query_len)
        else:
            from fusion_edge.logs import printed
            with printed():     # engines built while a trt bundle opens: on stderr (the parent keeps its tail)
                runner = (ReferenceRunner(args.reference, args.threads, args.query_len, args.reference_dtype)
                          if args.reference
                          else BundleRunner(args.bundle, args.threads, device_kwargs(args), args.query_len))
        result.update({"load_s": time.perf_counter() - t0, "rss_after_load_bytes": peak_rss_bytes(),
                       "backend": runner.info})
        m = measure(runner, args.images, args.questions_per_image, args.max_new_tokens, args.repeats, args.warmup)
        np.save(args.out / "first_logits.npy", m.pop("first_logits"))
        result.update(m)
        result.update({"ok": True, "peak_rss_bytes": peak_rss_bytes()})
    except Exception as e:   # reported by the parent next to the other backends' figures
        result["error"] = {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}
    (args.out / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
