"""Per-token overhead of the decode graph, measured against its own weight work: the same
bundle's decode graph next to a graph of only its weight products (every MatMul /
MatMulNBits of decode.onnx, each fed a (1,1,K) input, the same weights from
llm.onnx.data, the same session options), in alternating blocks. The difference is what
a decode step costs beyond streaming its weights through onnxruntime's own kernels: the
norms, the attention, the glue nodes and per-node dispatch. Not a test: figures for
bench/README.md.

  python bench/decode_floor.py BUNDLE [--positions 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from fusion_edge.runtime.backends.onnx_llm import OnnxLLM
from fusion_edge.runtime.backends.ort_session import make_session
from fusion_edge.runtime.pipeline import Pipeline

WEIGHT_OPS = ("MatMul", "MatMulNBits")


def weights_only(bundle: Path) -> Path:
    """bundle/.floor.onnx: the decode graph's weight products, side by side → its path."""
    import onnx
    from onnx import TensorProto, helper
    model = onnx.load(str(bundle / "decode.onnx"), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    nodes, inputs, outputs = [], [], []
    used: set[str] = set()
    for n, node in enumerate(x for x in model.graph.node if x.op_type in WEIGHT_OPS and x.input[1] in inits):
        k = (next(a.i for a in node.attribute if a.name == "K") if node.op_type == "MatMulNBits"
             else inits[node.input[1]].dims[0])
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[0], new.output[:] = f"x{n}", [f"y{n}"]
        nodes.append(new)
        used.update(x for x in node.input[1:] if x)
        inputs.append(helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, [1, 1, k]))
        outputs.append(helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "floor", inputs, outputs, [inits[u] for u in sorted(used) if u in inits])
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="fusion-edge")
    out.ir_version = model.ir_version
    path = bundle / ".floor.onnx"       # beside llm.onnx.data: external data paths are relative
    onnx.save_model(out, str(path))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--positions", type=int, default=20)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    bundle = Path(args.bundle)
    llm = Pipeline.open(bundle, device="cpu", threads=args.threads).llm
    if not isinstance(llm, OnnxLLM):
        raise SystemExit(f"{bundle} is not an ONNX bundle (its decode graph is what this measures)")
    path = weights_only(bundle)
    try:
        floor = make_session(path, ["CPUExecutionProvider"], args.threads, mem_arena=True)
    finally:
        path.unlink()
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in floor.get_inputs()}
    x = rng.standard_normal((args.positions, llm.cfg.llm.hidden_size)).astype(np.float32)
    step, weights = [], []
    for _ in range(args.blocks):
        llm.reserve(args.positions + args.steps + 1)
        llm.prefill(x)
        tok, t = 7, time.perf_counter()
        for _ in range(args.steps):
            tok = llm.decode_greedy(tok)
        step.append((time.perf_counter() - t) / args.steps * 1e3)
        t = time.perf_counter()
        for _ in range(args.steps):
            floor.run(None, feeds)
        weights.append((time.perf_counter() - t) / args.steps * 1e3)
    s, w = statistics.median(step), statistics.median(weights)
    print(f"{bundle.name}: {len(floor.get_inputs())} weight products; decode step {s:.2f} ms (best {min(step):.2f}), "
          f"weights alone {w:.2f} ms (best {min(weights):.2f}), overhead {s - w:.2f} ms "
          f"(best-to-best {min(step) - min(weights):.2f}), positions {args.positions}, threads {args.threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
