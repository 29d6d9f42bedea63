"""The decode graph's attention as onnxruntime's `GroupQueryAttention` (com.microsoft), over a
KV cache that the op updates in place.

A segment graph's layer i, as exported (export/ref_llm.py), attends like this:

    past_k_i (1,P,kv,hd) → Transpose → Concat(axis 2) with k_rot (1,kv,S,hd) → [repeat for GQA]
      → MatMul(q_rot (1,h,S,hd), ·ᵀ) → Mul(scale) → causal mask → Softmax → MatMul(·, v) → ctx (1,h,S,hd)

Every token that Transposes and Concats the whole cache, every layer. For the decode graph
(S = 1) `attention_to_gqa` replaces it per layer with

    GroupQueryAttention(q (1,S,h·hd), new_k_i, new_v_i as (1,S,kv·hd),
                        past_k_i, past_v_i (1,kv,C,hd) BNSH, seqlens_k, total_sequence_length)
      → ctx, present_k_i, present_v_i (1,kv,C,hd)

The runtime binds past_* and present_* to the same buffer (C = cache capacity): the op then
writes the new row at position seqlens_k of each head in place (onnxruntime's CPU kernel
treats the cache as shared when the two pointers are equal) and attends over rows
[0, seqlens_k]. Inputs: seqlens_k (1,) int32 = total length − 1, total_sequence_length ()
int32 = P + 1.

Rotary stays outside the op: q and k_rot are the graph's own rotate_half over the cos/sin
inputs (runtime/rope.py), so GQA runs with do_rotary = 0 and only attends. The scale is
read from the graph's own Mul, the causal mask is the op's (the new row attends to every
cached row, as the graph's mask allows for S = 1). Only the attention is replaced: the
projections (float, Q/DQ int8 or MatMulNBits int4) stay as they are.
"""
from __future__ import annotations

from collections import deque

SEQLENS = "seqlens_k"
TOTAL = "total_sequence_length"
OP = "GroupQueryAttention"
KV_LAYOUT = "BNSH"


class NotRewritable(Exception):
    """The graph's attention does not have the exported form (internal: the caller keeps
    the Concat attention for that graph)."""


def present_name(past: str) -> str:
    """past_k_3 → present_k_3."""
    return "present_" + past[len("past_"):]


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

    def constant(self, tensor: str):
        """A scalar constant's value (Constant node or initializer), or None."""
        from onnx import numpy_helper
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t)
        else:
            init = next((t for t in self.graph.initializer if t.name == tensor), None)
            value = numpy_helper.to_array(init) if init is not None else None
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


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


def _elem_types(model) -> dict:
    from onnx import shape_inference
    inferred = shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type for v in vis}


def attention_to_gqa(model) -> None:
    """Rewrite every layer of a segment `model` (in place) as described above; raises
    NotRewritable (the model then partly rewritten: the caller uses a fresh copy)."""
    from onnx import TensorProto, helper
    graph = model.graph
    g = _Graph(graph)
    types = _elem_types(model)
    pasts = [v for v in graph.input if v.name.startswith("past_k_")]
    if not pasts:
        raise NotRewritable("no past_k inputs")
    new_nodes, drop_outputs = [], set()
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
        qt = types.get(q)
        if qt is None or len(qt.shape.dim) != 4 or not qt.shape.dim[1].dim_value:
            raise NotRewritable(f"{q}: query heads unknown")
        heads = qt.shape.dim[1].dim_value
        ctx_type = types[ctx].elem_type if ctx in types else TensorProto.FLOAT
        new_nodes += _gqa_nodes(helper, i, q, qt.elem_type, ctx, ctx_type, heads, kv, hd, _scale(g, scores))
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
    _topo_sort(graph)
    _drop_dead(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


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
