"""Bytes on disk, and bytes of LLM weights read per decoded token.

At batch 1 a decode step reads every decoder weight once, the final norm and lm_head,
and ONE row of the embedding table. From a bundle's manifest alone:
  * ONNX LLM (any precision): the files of the `segment_*` components (decoder layers,
    norm, lm_head, as stored) + the `embed` component's bytes / vocab;
  * GGUF LLM: the LLM component's .gguf (not vision.gguf), minus all but one row of `token_embd` when lm_head is a
    separate `output` tensor (read from the GGUF header with the `gguf` package when it
    is installed; otherwise the whole file counts, and `method` says so).
For the PyTorch reference: the fp32 parameter bytes of the same tensors.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def disk_bytes(folder: str | os.PathLike[str]) -> int:
    """Total size of the regular files under `folder` (what a user copies to a device)."""
    total = 0
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def bundle_llm_bytes_per_token(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> dict:
    """→ {bytes, method}: LLM weight bytes read per decoded token for a bundle."""
    files = manifest["files"]
    vocab = int(manifest["fusion"]["llm"]["vocab_size"])
    llm = manifest.get("components", {}).get("llm")
    # the LLM's GGUF only: a gguf bundle also carries vision.gguf (tower and projectors, for the
    # native runtime), which decoding never reads
    ggufs = sorted(f for f in (llm["files"] if llm else files) if f.endswith(".gguf") and f != "vision.gguf")
    if ggufs:
        total = sum(int(files[n]["bytes"]) for n in ggufs)
        embed = sum(_gguf_untied_embedding_bytes(Path(path) / n) or 0 for n in ggufs)
        method = "gguf files minus embedding rows" if embed else "gguf files (whole)"
        return {"bytes": total - embed + embed / vocab, "method": method}
    comps = manifest["components"]
    segs = [c for name, c in comps.items() if name.startswith("segment_")]
    if not segs:
        raise ValueError("bundle manifest has neither .gguf files nor segment_* components")
    # each file once: the segments share one weight file (llm.onnx.data) in newer bundles
    seg_bytes = sum(int(files[f]["bytes"]) for f in {f for c in segs for f in c["files"]})
    embed = sum(int(files[f]["bytes"]) for f in comps["embed"]["files"]) if "embed" in comps else 0
    return {"bytes": seg_bytes + embed / vocab, "method": "onnx segment files + one embedding row"}


def _gguf_untied_embedding_bytes(path: Path) -> int | None:
    """Bytes of `token_embd.weight` when the GGUF also has its own `output.weight`
    (lm_head); None when the table doubles as lm_head or `gguf` is not installed."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    reader = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    if "output.weight" not in sizes:
        return None
    return sizes.get("token_embd.weight")


def torch_llm_bytes_per_token(llm) -> int:
    """The reference LLM (a torch module with .embed, .layers, .norm, .lm_head): parameter
    bytes read per token, one embedding row unless the table is also lm_head."""
    seen, total = set(), 0
    embed = llm.embed.weight
    for p in llm.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    tied = llm.lm_head.weight is embed or llm.lm_head.weight.data_ptr() == embed.data_ptr()
    if not tied:
        total -= embed.numel() * embed.element_size()
        total += embed.shape[1] * embed.element_size()
    return total
