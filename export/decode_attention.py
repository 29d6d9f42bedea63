"""The decode graph's attention as onnxruntime's `GroupQueryAttention` (com.microsoft), over a
KV cache that the op updates in place.

A segment graph's layer i, as exported (export/ref_llm.py), attends like this:

    past_k_i (1,P,kv,hd) → Transpose → Concat(axis 2) with k_rot (1,kv,S,hd) → [repeat for GQA]
      → MatMul(q_rot (1,h,S,hd), ·ᵀ) → Mul(scale) → causal mask → Softmax → MatMul(·, v) → ctx (1,h,S,hd)

Every token that Transposes and Concats the whole cache, every layer. For the decode graph
(S = 1) `attention_to_gqa` replaces it per layer with

    GroupQueryAttention(qkv (1,S,(h+2kv)·hd), -, -, past_k_i, past_v_i (1,kv,C,hd) BNSH,
                        seqlens_k, total_sequence_length, cos_cache, sin_cache (R,hd/2))
      → ctx (1,S,h·hd), present_k_i, present_v_i (1,kv,C,hd)

The runtime binds past_* and present_* to the same buffer (C = cache capacity): the op then
writes the new row at position seqlens_k of each head in place (onnxruntime's CPU kernel
treats the cache as shared when the two pointers are equal) and attends over rows
[0, seqlens_k]. Inputs: seqlens_k (1,) int32 = total length − 1 = P, total_sequence_length
() int32 = P + 1.

q, k, v: the fused projection's output, packed, and the op rotates q and k itself
(do_rotary, non-interleaved) from position tables whose row p is the runtime's own cos/sin
row for position p (rope.position_tables): export/decode_qkv.py proves, node by node, that
the graph's slices and rotary are exactly that. Where it cannot (another exporter, fp16
casts, head size not a multiple of 16), the op takes q, k, v after the graph's own rotary
(do_rotary = 0, per-token cos/sin inputs as before). The scale is read from the graph's own
Mul; the causal mask is the op's (the new row attends to every cached row, as the graph's
mask allows for S = 1). Only the attention is replaced: the projections (float, Q/DQ int8 or
MatMulNBits int4) stay as they are. After onnxruntime's optimizer a layer is 14 nodes per
token (the Concat form: 46 on the bench preset).
"""
from __future__ import annotations

from collections import deque

from .decode_qkv import packed_source

from fusion_edge.runtime.layout import COS, KV_LAYOUT, OP, SEQLENS, SIN, TOTAL, present_name  # noqa: F401


class NotRewritable(Exception):
    """The graph's attention does not have the exported form (internal: the caller keeps
    the Concat attention for that graph)."""


class _Graph:
    """Producer / consumer maps over one graph's nodes."""

    def __init__(self, graph):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def only_consumer(self, tensor: str, ignore: str = ""):
        uses = [n for n in self.consumers.get(tensor, []) if n.op_type != ignore]
        if len(uses) != 1:
            raise NotRewritable(f"{tensor} has {len(uses)} consumers")
        return uses[0]

    def first_below(self, tensor: str, op_type: str):
        """The nearest node of `op_type` downstream of `tensor` (breadth first)."""
        seen, todo = set(), deque([tensor])
        while todo:
            for node in self.consumers.get(todo.popleft(), []):
                if node.op_type == op_type:
                    return node
                if node.name not in seen:
                    seen.add(node.name)
                    todo.extend(node.output)
        raise NotRewritable(f"no {op_type} below {tensor}")

    def ints(self, tensor: str) -> list[int] | None:
        """A constant's values as ints (Constant node or initializer), or None."""
        from onnx import numpy_helper
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t).astype("int64").reshape(-1).tolist()
        init = next((t for t in self.graph.initializer if t.name == tensor), None)
        return numpy_helper.to_array(init).astype("int64").reshape(-1).tolist() if init is not None else None

    def constant(self, tensor: str):
        """A scalar constant's value (Constant node or initializer), or None."""
        from onnx import numpy_helper
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t)
        else:
            init = next((t for t in self.graph.initializer if t.name == tensor), None)
            if init is None:
                return None
            value = numpy_helper.to_array(init)
        return float(value.reshape(-1)[0]) if value.size == 1 else None


def _cache_concat(g: _Graph, past: str):
    """past (1,P,kv,hd) → Transpose / Cast chain → the Concat(axis 2) that appends the new rows."""
    tensor = past
    while True:
        node = g.only_consumer(tensor, ignore="Shape")   # the mask's Shape reads the first past
        if node.op_type == "Concat":
            axis = next(a.i for a in node.attribute if a.name == "axis")
            if axis not in (2, -2) or list(node.input[:1]) != [tensor] or len(node.input) != 2:
                raise NotRewritable(f"{node.name}: not the cache Concat")
            return node
        if node.op_type not in ("Transpose", "Cast"):
            raise NotRewritable(f"{node.name}: {node.op_type} between {past} and its Concat")
        tensor = node.output[0]


def _scale(g: _Graph, scores) -> float:
    mul = g.only_consumer(scores.output[0])
    if mul.op_type != "Mul":
        raise NotRewritable(f"{mul.name}: no scale after the scores MatMul")
    value = next((v for v in map(g.constant, mul.input) if v is not None), None)
    if value is None:
        raise NotRewritable(f"{mul.name}: the scale is not a constant")
    return value


def _elem_types(model):
    """tensor → element type. onnx's inference stops at contrib ops (MatMulNBits), so an
    unknown type is float32 when the graph holds no float16 at all (int8/int4 graphs are
    quantized from fp32), None (unknown) otherwise."""
    from onnx import TensorProto, shape_inference
    inferred = shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    known = {v.name: v.type.tensor_type.elem_type for v in vis if v.type.tensor_type.elem_type}
    half = TensorProto.FLOAT16
    fp16 = any(t.data_type == half for t in model.graph.initializer) or any(
        a.name == "to" and a.i == half for n in model.graph.node if n.op_type == "Cast" for a in n.attribute)
    return lambda name: known.get(name, None if fp16 else TensorProto.FLOAT)


def _query_heads(g: _Graph, q: str, hd: int) -> int:
    """h, from the Reshape to (1, S, h, hd) the query comes from (walking up through the
    rotary and the transpose)."""
    seen, todo = set(), deque([q])
    while todo:
        node = g.producer.get(todo.popleft())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Reshape":
            shape = g.ints(node.input[1])
            if shape is not None and len(shape) == 4 and shape[3] == hd and shape[2] > 0:
                return shape[2]
        todo.extend(x for x in node.input if x not in ("cos", "sin"))
    raise NotRewritable(f"{q}: query heads unknown")


def attention_to_gqa(model, packed: bool = True) -> None:
    """Rewrite every layer of a segment `model` (in place) as described above; raises
    NotRewritable (the model then partly rewritten: the caller uses a fresh copy).
    `packed`: feed the fused projection and let the op rotate where the graph proves the
    exported form (export/decode_qkv.py); otherwise q/k/v after the graph's own rotary."""
    from onnx import TensorProto, helper
    graph = model.graph
    g = _Graph(graph)
    types = _elem_types(model)
    pasts = [v for v in graph.input if v.name.startswith("past_k_")]
    if not pasts:
        raise NotRewritable("no past_k inputs")
    new_nodes, drop_outputs, rotary = [], set(), False
    for past in pasts:
        i = past.name[len("past_k_"):]
        dims = [d.dim_value for d in past.type.tensor_type.shape.dim]
        kv, hd = dims[2], dims[3]
        if not kv or not hd or hd % 8:
            raise NotRewritable(f"{past.name}: kv heads / head size {kv}/{hd} unknown or head size not a multiple of 8")
        kcat, vcat = _cache_concat(g, past.name), _cache_concat(g, f"past_v_{i}")
        scores = g.first_below(kcat.output[0], "MatMul")
        context = g.first_below(vcat.output[0], "MatMul")
        q, ctx = scores.input[0], context.output[0]
        heads, q_type, ctx_type = _query_heads(g, q, hd), types(q), types(ctx)
        if q_type is None or ctx_type is None:
            raise NotRewritable(f"{q}: element type unknown")
        fused = _packed(g, types, q, kcat, vcat, heads, kv, hd) if packed else None
        if fused:
            rotary = True
            new_nodes += _packed_nodes(helper, i, fused, ctx, ctx_type, heads, kv, hd, _scale(g, scores))
        else:
            new_nodes += _gqa_nodes(helper, i, q, q_type, ctx, ctx_type, heads, kv, hd, _scale(g, scores))
        drop_outputs |= {f"new_k_{i}", f"new_v_{i}"}
        for name in (past.name, f"past_v_{i}"):
            _bnsh(next(v for v in graph.input if v.name == name), kv, hd)
            graph.output.append(helper.make_tensor_value_info(present_name(name), TensorProto.FLOAT,
                                                              [1, kv, "C", hd]))
        for node in list(graph.node):           # consumers of ctx read the op's output instead
            node.input[:] = [f"gqa{i}/ctx" if x == ctx else x for x in node.input]
    kept = [o for o in graph.output if o.name not in drop_outputs]
    del graph.output[:]
    graph.output.extend(kept)
    graph.node.extend(new_nodes)
    graph.input.extend([helper.make_tensor_value_info(SEQLENS, TensorProto.INT32, [1]),
                        helper.make_tensor_value_info(TOTAL, TensorProto.INT32, [])])
    if rotary:
        hd = pasts[0].type.tensor_type.shape.dim[3].dim_value
        graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["R", hd // 2])
                           for name in (COS, SIN))
    _topo_sort(graph)
    _drop_dead(graph)
    _drop_unused_inputs(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _packed(g: _Graph, types, q: str, kcat, vcat, heads: int, kv: int, hd: int) -> str | None:
    """The fused projection T when q/k/v are its slices and the rotary is the exported one
    (export/decode_qkv.py), T float32 and hd a multiple of 16 (the op's rotary); else None."""
    from onnx import TensorProto
    if hd % 16:
        return None
    t = packed_source(g, q, kcat.input[1], vcat.input[1], heads, kv, hd)
    return t if t is not None and types(t) == TensorProto.FLOAT else None


def _packed_nodes(helper, i: str, packed: str, ctx: str, ctx_type: int, heads: int, kv: int, hd: int,
                  scale: float) -> list:
    """T (1,S,(h+2kv)·hd) → the op with its own rotary (do_rotary, non-interleaved, the cos/sin
    tables' row seqlens_k) → gqa{i}/ctx (1,h,S,hd) in the context's type."""
    from onnx import TensorProto, numpy_helper
    import numpy as np
    p = f"gqa{i}/"
    split = numpy_helper.from_array(np.array([0, 0, heads, hd], np.int64), p + "heads")
    out = p + "ctx32" if ctx_type != TensorProto.FLOAT else p + "ctx"
    nodes = [helper.make_node("Constant", [], [p + "heads"], value=split),
             helper.make_node(OP, [packed, "", "", f"past_k_{i}", f"past_v_{i}", SEQLENS, TOTAL, COS, SIN],
                              [p + "out", f"present_k_{i}", f"present_v_{i}"], name=f"{p}{OP}", domain="com.microsoft",
                              num_heads=heads, kv_num_heads=kv, scale=scale, do_rotary=1, rotary_interleaved=0),
             helper.make_node("Reshape", [p + "out", p + "heads"], [p + "out4"]),
             helper.make_node("Transpose", [p + "out4"], [out], perm=[0, 2, 1, 3])]
    if ctx_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [out], [p + "ctx"], to=ctx_type))
    for n in nodes:
        n.name = n.name or f"{p}{n.op_type}_{n.output[0].rsplit('/', 1)[-1]}"
    return nodes


def _drop_unused_inputs(graph) -> None:
    """Inputs no node reads any more (cos/sin when the op rotates)."""
    used = {x for n in graph.node for x in n.input}
    kept = [v for v in graph.input if v.name in used]
    del graph.input[:]
    graph.input.extend(kept)


def _gqa_nodes(helper, i: str, q: str, q_type: int, ctx: str, ctx_type: int, heads: int, kv: int, hd: int,
               scale: float) -> list:
    """q (1,h,S,hd) → (1,S,h·hd) float; new_k/new_v (1,S,kv,hd) → (1,S,kv·hd); the op; its
    output (1,S,h·hd) → gqa{i}/ctx (1,h,S,hd) in the context's type."""
    from onnx import TensorProto, numpy_helper
    import numpy as np
    p = f"gqa{i}/"
    flat = numpy_helper.from_array(np.array([0, 0, -1], np.int64), p + "flat")
    split = numpy_helper.from_array(np.array([0, 0, heads, hd], np.int64), p + "heads")
    nodes = [helper.make_node("Constant", [], [p + "flat"], value=flat),
             helper.make_node("Constant", [], [p + "heads"], value=split),
             helper.make_node("Transpose", [q], [p + "q_bsnh"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", [p + "q_bsnh", p + "flat"], [p + "q"]),
             helper.make_node("Reshape", [f"new_k_{i}", p + "flat"], [p + "k"]),
             helper.make_node("Reshape", [f"new_v_{i}", p + "flat"], [p + "v"])]
    query = p + "q"
    if q_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [query], [p + "q32"], to=TensorProto.FLOAT))
        query = p + "q32"
    nodes.append(helper.make_node(
        OP, [query, p + "k", p + "v", f"past_k_{i}", f"past_v_{i}", SEQLENS, TOTAL],
        [p + "out", f"present_k_{i}", f"present_v_{i}"], name=f"{p}{OP}", domain="com.microsoft",
        num_heads=heads, kv_num_heads=kv, scale=scale, do_rotary=0))
    nodes += [helper.make_node("Reshape", [p + "out", p + "heads"], [p + "out4"]),
              helper.make_node("Transpose", [p + "out4"], [p + "ctx32" if ctx_type != TensorProto.FLOAT else p + "ctx"],
                               perm=[0, 2, 1, 3])]
    if ctx_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [p + "ctx32"], [p + "ctx"], to=ctx_type))
    for n in nodes:
        n.name = n.name or f"{p}{n.op_type}_{n.output[0].rsplit('/', 1)[-1]}"
    return nodes


def _bnsh(value_info, kv: int, hd: int) -> None:
    """(1,P,kv,hd) → (1,kv,C,hd): the whole cache buffer."""
    dims = value_info.type.tensor_type.shape.dim
    for d, v in zip(dims, (1, kv, "C", hd)):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v


def _drop_dead(graph) -> None:
    """Remove nodes none of whose outputs reach the graph outputs."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = needed
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _topo_sort(graph) -> None:
    """Nodes in an order where every input is produced before use (the op nodes were appended)."""
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    todo, done = list(graph.node), []
    while todo:
        rest = []
        for node in todo:
            if all(x in ready for x in node.input):
                done.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(todo):
            raise NotRewritable("cycle or missing input after the rewrite")
        todo = rest
    del graph.node[:]
    graph.node.extend(done)
