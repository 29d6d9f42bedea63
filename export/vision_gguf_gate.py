"""The gate of `vision.gguf` (export/vision_gguf.py) at gguf export.

The native runtime (native/, the Android bridge) runs vision.gguf; the Python runtime never
opens it, so the end-to-end verification does not see it. Here the tensors the file actually
holds (dequantized from F32 / F16 / Q8_0 with the gguf package, the same values ggml reads)
are loaded into the PyTorch reference's tower, projectors and alignment layers, and those run
on the verification images beside the same modules with the checkpoint's weights — the tower
the ONNX graphs are verified against. Per graph (vision global tiles, vision main tile guided
by the question, every align_k) the worst cosine and relative error over the cases, gated by
the file's type (runtime/graph_gates.py GRAPH_GATES["vision_gguf"]). The `fusion.*`
hyperparameters must equal the config's. This runs wherever the export runs (torch and gguf,
both needed to write the file); the native ggml compute itself is compared with the PyTorch
reference by tests/test_native_parity.py where the native build exists.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.fidelity import cosine, rel_error
from fusion_edge.runtime.graph_gates import GRAPH_GATES, gate_figures
from fusion_edge.runtime.preprocess import static_hd_tiles
from fusion_edge.runtime.prompt import build_prompt

from .checkpoint import Checkpoint
from .gguf_writer import import_gguf
from .ref_align import AlignmentLayer
from .ref_model import _module_name
from .ref_vision import MLPProjector, VisionTower, global_grid, pool_global
from .vision_gguf import metadata
from .weight_map import projector_entries, sampler_entries, tower_entries

log = logging.getLogger(__name__)

FIX = ("report this with the figures above: vision.gguf is what the native runtime and the Android bridge run; "
       "--force keeps the bundle anyway")
CASES = 2                 # built-in verification cases (export/verify.py builtin_cases)


class VisionSide(nn.Module):
    """The modules vision.gguf holds, under the reference model's names (tower, projectors,
    alignment layers); parameters by canonical name (export/weight_map.py)."""

    def __init__(self, cfg, state: dict[str, np.ndarray]):
        super().__init__()
        H, Dv, depth = cfg.llm.hidden_size, cfg.tower.hidden_size, cfg.projector_depth
        with torch.device("meta"):
            self.vision = VisionTower(cfg.tower)
            self.mm_projector = MLPProjector(3 * Dv, H, depth)
            self.aux_projector = MLPProjector(H, Dv, depth)
            self.align = nn.ModuleList(AlignmentLayer(H) for _ in cfg.interaction_layers)
        own = dict(self.named_parameters())
        names = {_module_name(n) for n in state}
        missing = set(own) - names
        if missing:
            raise ExportError(f"vision.gguf lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}.",
                              "re-export the bundle")
        self.load_state_dict({_module_name(n): torch.from_numpy(np.array(a, np.float32))     # owned, writable
                              for n, a in state.items()}, strict=False, assign=True)
        self.eval()

    @torch.no_grad()
    def outputs(self, pixels_global, main_tile, inst: torch.Tensor, keep: torch.Tensor, q: int, window: int
                ) -> dict[str, np.ndarray]:
        """Projected global tiles (4,N,H), the main tile guided by the instruct embeddings inst
        (T,H) with keep (1,T) = id != 0 → (N,H), each align_k's new latents (q,H) from
        h_inst = inst's last row (the prompt's instruct position) and the pooled global grid."""
        g = self.mm_projector(self.vision(torch.from_numpy(pixels_global)))
        main = self.mm_projector(self.vision(torch.from_numpy(main_tile)[None], self.aux_projector(inst[None]), keep))
        latents, ctx = pool_global(global_grid(g), q, window)
        out = {"vision_global": g.numpy(), "vision_main": main[0].numpy()}
        for k, layer in enumerate(self.align):       # h_inst: one row (H,), here the last instruct row
            out[f"align_{k:02d}"] = layer(inst[-1], latents, ctx).numpy()
        return out


def entries(cfg) -> list:
    return tower_entries(cfg) + projector_entries(cfg) + sampler_entries(cfg)


def read_tensors(path: Path, cfg) -> dict[str, np.ndarray]:
    """vision.gguf's tensors, dequantized to float32, in their numpy (canonical) shapes."""
    gguf = import_gguf()
    reader = gguf.GGUFReader(str(path))
    shapes = {e.name: e.shape for e in entries(cfg)}
    out = {}
    for t in reader.tensors:
        if t.name not in shapes:
            raise ExportError(f"vision.gguf holds an unknown tensor {t.name}.", "re-export the bundle")
        flat = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = np.asarray(flat, np.float32).reshape(shapes[t.name])
    return out


def metadata_mismatches(path: Path, cfg) -> list[str]:
    """`fusion.*` fields of vision.gguf that differ from what the config says."""
    gguf = import_gguf()
    fields = gguf.GGUFReader(str(path)).fields
    bad = []
    for key, want in metadata(cfg).items():
        got = _field(fields[key]) if key in fields else None
        same = np.allclose(got, want, rtol=1e-6) if isinstance(want, float) and got is not None else got == want
        if not same:
            bad.append(f"{key} = {got!r} (config: {want!r})")
    return bad


def _field(f):
    kind = f.types[0].name
    if kind == "STRING":
        return bytes(f.parts[-1]).decode()
    if kind == "ARRAY":
        return [int(f.parts[i][0]) for i in f.data]
    return f.parts[-1][0].item()


def _cases(ckpt: Checkpoint, tokenizer, n: int) -> list[tuple]:
    """(global tiles, main tile, instruct ids) of the built-in verification cases."""
    from .verify import builtin_cases
    cfg = ckpt.config
    out = []
    for image, question in builtin_cases(n):
        tiles = static_hd_tiles(image, cfg.tower.image_size)
        layout = build_prompt(tokenizer, cfg.template, question, cfg.tower.num_patches, cfg.default_query_len,
                              cfg.tokenizer_model_max_length)
        out.append((tiles.global_tiles, tiles.main, np.asarray(layout.instruct_ids, np.int64)))
    return out


def vision_gguf_figures(ckpt: Checkpoint, path: Path, tokenizer, cases: int = CASES) -> dict:
    """Per graph: worst cosine and relative error of the vision.gguf modules against the
    checkpoint's over the cases; the overall `cosine_min` / `max_rel_error`; metadata mismatches."""
    cfg = ckpt.config
    want_side = VisionSide(cfg, {e.name: ckpt.canonical(e) for e in entries(cfg)})
    got_side = VisionSide(cfg, read_tensors(path, cfg))
    embed = ckpt.canonical(next(e for e in ckpt.entries if e.name == "llm.embed.weight"))
    per_graph: dict[str, dict] = {}
    for pixels, main, ids in _cases(ckpt, tokenizer, cases):
        inst = torch.from_numpy(np.ascontiguousarray(embed[ids], np.float32))
        keep = torch.from_numpy(ids != 0)[None]
        want, got = (side.outputs(pixels, main, inst, keep, cfg.default_query_len, cfg.window_size)
                     for side in (want_side, got_side))
        for name in want:
            d = per_graph.setdefault(name, {"cosine_min": 1.0, "rel_error_max": 0.0})
            d["cosine_min"] = min(d["cosine_min"], cosine(want[name], got[name]))
            d["rel_error_max"] = max(d["rel_error_max"], rel_error(want[name], got[name]))
    return {"against": "the checkpoint's tower, projectors and alignment layers (PyTorch reference)",
            "runner": "PyTorch reference modules holding vision.gguf's dequantized tensors",
            "cases": cases, "per_graph": per_graph,
            "cosine_min": min(d["cosine_min"] for d in per_graph.values()),
            "max_rel_error": max(d["rel_error_max"] for d in per_graph.values()),
            "metadata_mismatches": metadata_mismatches(path, cfg)}


def gate_vision_gguf(ckpt: Checkpoint, path: Path, quant: str, tokenizer, force: bool = False) -> dict:
    """The vision.gguf gate → gated figures (stored in its component record); an ExportError
    below the bounds of its type, or with hyperparameters that differ, unless `force`."""
    figures = vision_gguf_figures(ckpt, path, tokenizer)
    gated = gate_figures(figures, GRAPH_GATES["vision_gguf"][quant])
    if figures["metadata_mismatches"]:
        gated.update(passed=False, gate=gated["gate"] + ["hyperparameters differ: "
                                                         + "; ".join(figures["metadata_mismatches"][:3])])
    log.info(format_vision_gguf(gated, quant))
    if not gated["passed"] and not force:
        raise ExportError(f"vision.gguf ({quant}) does not match the checkpoint's vision side: "
                          + "; ".join(gated["gate"]), FIX)
    return gated


def format_vision_gguf(f: dict, quant: str) -> str:
    lines = [f"vision.gguf ({quant}) vs the checkpoint's vision side, {f['cases']} built-in cases:"]
    for name, d in sorted(f["per_graph"].items()):
        lines.append(f"  {name:<14} cosine ≥ {d['cosine_min']:.6f}   rel. error ≤ {d['rel_error_max']:.2e}")
    lines.append("  gate: " + ("passed" if f["passed"] else "FAILED: " + "; ".join(f["gate"])))
    return "\n".join(lines)
