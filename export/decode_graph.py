"""The merged decode graph and the one weight file it shares with the LLM segments.

Prefill runs the segments one by one (the alignment runs between them); decoding one
token needs no alignment, so it runs `decode.onnx`: the segment graphs chained into one
graph (segment n's `hidden_out` feeds segment n+1's `hidden`), one session run per token.

    decode.onnx: hidden (1,1,H), cos/sin (1,hd), seqlens_k (1,) int32, total_sequence_length ()
      int32, past_k_i/past_v_i (1,kv,C,hd) for every layer: the whole cache, BNSH
      → logits (1,V), token (1,) int64 (argmax of the logits, in the graph),
        present_k_i/present_v_i (1,kv,C,hd): the same buffers, the new row written in place

Its attention is onnxruntime's GroupQueryAttention (export/decode_attention.py; record key
`attention`, cache layout `kv_layout` = BNSH). Bundles written before it (and TensorRT
bundles, whose engines cannot hold the contrib op) have the Concat form instead:
past_k_i/past_v_i (1,P,kv,hd) → new_k_i/new_v_i (1,1,kv,hd), no `attention` key.

Every weight is stored once: all LLM initializers (segments and decode graph) live in one
external-data file, `llm.onnx.data`, and both graphs reference the same bytes by offset.
Offsets are page-aligned (4 KiB). On disk the weights are stored once; in RAM each
onnxruntime session still holds its own (prepacked) copy (README, The bundle). Built from
the exported segments one at a time, so peak RAM stays one segment. The quantizer rebuilds
it from the quantized segments the same way.
Here, beside BundleWriter, because it is the bundle's file layout that export and quantize
both write (its file names: runtime/layout.py); it needs `onnx`, imported lazily.
"""
from __future__ import annotations

from pathlib import Path

from .decode_attention import COS, KV_LAYOUT, OP, SEQLENS, SIN, TOTAL, NotRewritable, attention_to_gqa
from fusion_edge.runtime.errors import MissingExtraError
from fusion_edge.runtime.layout import DECODE, DECODE_CONCAT, EXACT_QDQ_KEY, SHARED_DATA
from fusion_edge.runtime.layout import DECODE_GRAPHS as DECODE_GRAPHS  # re-exported with the names above

ALIGN = 4096                 # page-aligned offsets, as onnx's own writer does (mmap-friendly)
INLINE_BYTES = 1024          # smaller initializers (shapes, scalars) stay inside each graph


def _interface(name: str) -> bool:
    """Names the chained graph keeps as they are (its inputs and outputs)."""
    return (name in ("cos", "sin", "logits", SEQLENS, TOTAL, COS, SIN, "")
            or name.startswith(("past_", "new_", "present_")))


def _renamer(n: int):
    def rename(name: str) -> str:
        if name == "hidden":
            return "hidden" if n == 0 else f"s{n - 1}/hidden_out"
        return name if _interface(name) else f"s{n}/{name}"
    return rename


def _onnx():
    try:
        import onnx
    except ImportError:
        raise MissingExtraError("onnx", "export", "building the decode graph") from None
    return onnx


def _add_segment(graph, model, n: int) -> None:
    """Append segment n's nodes and initializers to `graph`, internal names prefixed."""
    from onnx import NodeProto, TensorProto
    assert not model.functions, "segment graphs are plain (no local functions)"
    rename = _renamer(n)
    for node in model.graph.node:
        assert all(a.type not in (5, 10) for a in node.attribute), "no subgraphs in segment graphs"
        new = NodeProto()
        new.CopyFrom(node)
        new.name = f"s{n}/{node.name}"
        new.input[:] = [rename(x) for x in node.input]
        new.output[:] = [rename(x) for x in node.output]
        graph.node.append(new)
    for init in model.graph.initializer:
        t = TensorProto()
        t.CopyFrom(init)
        t.name = rename(init.name)
        graph.initializer.append(t)


def _to_shared(tensor, out, offset: int) -> int:
    """Write `tensor`'s bytes to the shared file at the next aligned offset and point the
    tensor there → the new end offset. Small tensors stay inline."""
    from onnx import TensorProto, numpy_helper
    blob = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
    if len(blob) < INLINE_BYTES:
        return offset
    pad = -offset % ALIGN
    out.write(b"\0" * pad)
    offset += pad
    out.write(blob)
    _point(tensor, offset, len(blob))
    tensor.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    return offset + len(blob)


def _point(tensor, offset: int, length: int) -> None:
    from onnx import TensorProto
    del tensor.external_data[:]
    for k, v in (("location", SHARED_DATA), ("offset", str(offset)), ("length", str(length))):
        e = tensor.external_data.add()
        e.key, e.value = k, v
    tensor.data_location = TensorProto.EXTERNAL


def build_shared(folder: Path, components: dict, gqa: bool = True) -> dict:
    """Rewrite the `segment_*` graphs in `folder` to keep their weights in `llm.onnx.data`,
    add `decode.onnx` referencing the same bytes → {name: component record} of the decode
    graph(s); the segment records' `files` are updated in place. `gqa`: attention as
    GroupQueryAttention over the shared cache, plus `decode_concat.onnx` in the Concat form
    for CUDA; when a segment's attention does not have the exported form (a graph from
    another exporter) every segment keeps the Concat form and `decode.onnx` is that."""
    onnx = _onnx()
    names = sorted(n for n in components if n.startswith("segment_"))
    models = []           # structure only: the weights are in the shared file by now
    with open(folder / SHARED_DATA, "wb") as out:
        offset = 0
        for name in names:
            comp = components[name]
            path = folder / comp["files"][0]
            model = onnx.load(str(path), load_external_data=True)
            for t in model.graph.initializer:
                offset = _to_shared(t, out, offset)
            for old in comp["files"][1:]:
                (folder / old).unlink()
            onnx.save_model(model, str(path))
            comp["files"] = [path.name, SHARED_DATA]
            models.append(model)
    rewritten = _with_gqa(models) if gqa else None
    first, last = components[names[0]], components[names[-1]]
    records = {DECODE: _record(DECODE, write_decode_graph(rewritten or models, folder), first, last, rewritten)}
    if rewritten:
        records[DECODE_CONCAT] = _record(DECODE_CONCAT, write_decode_graph(models, folder, DECODE_CONCAT),
                                         first, last, None)
    return records


def _record(name: str, graph, first: dict, last: dict, gqa) -> dict:
    return {"name": name, "backend": "onnxruntime", "precision": first["precision"],
            **({EXACT_QDQ_KEY: True} if first.get(EXACT_QDQ_KEY) else {}),
            **({"attention": OP, "kv_layout": KV_LAYOUT} if gqa else {}),
            "files": [f"{name}.onnx", SHARED_DATA], "inputs": [v.name for v in graph.input],
            "outputs": [v.name for v in graph.output], "layers": [first["layers"][0], last["layers"][1]],
            "final": True, "weights": f"shared with segment_* through {SHARED_DATA}"}


def _with_gqa(models: list) -> list | None:
    """Copies of the segment models with GroupQueryAttention, or None if one cannot be."""
    from onnx import ModelProto
    out = []
    for model in models:
        copy = ModelProto()
        copy.CopyFrom(model)
        try:
            attention_to_gqa(copy)
        except NotRewritable:
            return None
        out.append(copy)
    return out


def write_decode_graph(models: list, folder: Path, name: str = DECODE):
    """The segment graphs (in order, weights already in the shared file) chained into
    `folder`/<name>.onnx → its graph."""
    onnx = _onnx()
    from onnx import helper
    graph = helper.make_graph([], name, [], [])
    opsets: dict[str, int] = {}
    ir_version = 0
    inputs, outputs = {}, {}
    for n, model in enumerate(models):
        _add_segment(graph, model, n)
        rename = _renamer(n)
        inputs.update({rename(v.name): v for v in model.graph.input if _interface(v.name) or n == 0})
        outputs.update({v.name: v for v in model.graph.output if _interface(v.name)})
        opsets.update({o.domain: max(o.version, opsets.get(o.domain, 0)) for o in model.opset_import})
        ir_version = max(ir_version, model.ir_version)
    _io(graph, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="fusion-edge")
    model.ir_version = ir_version
    onnx.save_model(model, str(folder / f"{name}.onnx"))
    return graph


def _io(graph, inputs: dict, outputs: dict) -> None:
    """Inputs: hidden, cos, sin (seqlens_k, total_sequence_length), then past_k/past_v by
    layer; outputs: logits, token, then new_k/new_v (present_k/present_v) by layer (the
    order the runtime binds)."""
    from onnx import TensorProto, helper
    order = lambda d: sorted(d, key=lambda k: (k.startswith(("past_", "new_", "present_")), _layer(k), k))  # noqa: E731
    graph.input.extend(inputs[k] for k in order(inputs))
    graph.node.append(helper.make_node("ArgMax", ["logits"], ["token"], name="argmax", axis=-1, keepdims=0))
    token = helper.make_tensor_value_info("token", TensorProto.INT64, [1])
    head = [outputs["logits"], token]
    graph.output.extend(head + [outputs[k] for k in order(outputs) if k != "logits"])


def _layer(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else -1
