"""INT8 weight-only embedding table: the `embed` graph rebuilt as Gather → Cast → Mul.

ids (1,S) int64 → table_q[ids] (1,S,H) int8 → float → × scale[ids] (1,S,1) → embeds (1,S,H).
Per-row symmetric scales (row absmax / 127) make every looked-up row exact to half a step,
1/254 of the row's largest value, and the table a quarter of its fp32 bytes (for a
32064 × 3072 Phi-3.5 table: 394 MB → 99 MB). The graph's I/O names are unchanged, so the
runtime treats it like the fp32 graph. (onnxruntime's own Gather quantizer emits int4
`GatherBlockQuantized`; a plain int8 row table is simpler and exact enough here.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fusion_edge.runtime.errors import ExportError

from . import graph_io


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V,H) float → (int8 (V,H), float32 scales (V,1)); an all-zero row gets scale 1."""
    absmax = np.abs(table).max(axis=1, keepdims=True).astype(np.float32)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_embed(src: Path, dst: Path) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = graph_io.load(src)
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    tables = {t.name: t for t in model.graph.initializer}
    if len(gathers) != 1 or gathers[0].input[0] not in tables:
        raise ExportError(f"{src.name} is not the single-Gather embedding graph this quantizer expects.",
                          "re-export the fp32 bundle with this fusion-edge version")
    ids, out = model.graph.input[0].name, model.graph.output[0].name
    q, scale = quantize_rows(numpy_helper.to_array(tables[gathers[0].input[0]]).astype(np.float32))
    nodes = [helper.make_node("Gather", ["table_q", ids], ["rows_q"], name="embed/gather_q", axis=0),
             helper.make_node("Cast", ["rows_q"], ["rows_f"], name="embed/cast", to=TensorProto.FLOAT),
             helper.make_node("Gather", ["row_scale", ids], ["scales"], name="embed/gather_scale", axis=0),
             helper.make_node("Mul", ["rows_f", "scales"], [out], name="embed/scale")]
    graph = helper.make_graph(nodes, "embed_int8", list(model.graph.input), list(model.graph.output),
                              [numpy_helper.from_array(q, "table_q"), numpy_helper.from_array(scale, "row_scale")])
    qmodel = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="fusion-edge")
    qmodel.ir_version = model.ir_version
    onnx.checker.check_model(qmodel)
    files = graph_io.save(qmodel, dst)
    return {"precision": "int8-weight", "scheme": "int8 rows + per-row fp32 scale (Gather, Cast, Mul)",
            "files": files, "quantized_weights": 1, "excluded": []}
