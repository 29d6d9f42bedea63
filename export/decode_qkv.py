"""Where a segment layer's q, k, v come from, for GroupQueryAttention's packed input and its
own rotary (export/decode_attention.py).

The exporter (export/ref_llm.py) writes, per layer, from the fused projection T (1,S,(h+2kv)·hd):

    q = Transpose(Reshape(Slice(T, 0, h·hd)))           (1,h,S,hd), then rotary
    k = Transpose(Reshape(Slice(T, h·hd, kv·hd)))       (1,kv,S,hd), then rotary
    v = Transpose(Reshape(Slice(T, (h+kv)·hd, kv·hd)))  (1,kv,S,hd)
    rotary(x) = Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, hd/2:)), Slice(x, :hd/2)), sin))

That is GroupQueryAttention's packed QKV input (q, k, v heads in this order along the last
axis) and its non-interleaved rotary: out[:hd/2] = x1·c − x2·s, out[hd/2:] = x2·c + x1·s, with
c, s the first halves of the runtime's cos/sin rows (runtime/rope.py writes
cos = cat(freqs, freqs), so both halves are equal). `packed_source` proves that form node by
node (op types, slice bounds, perms, the cos/sin inputs) and returns T, or None: then the
caller keeps the graph's own q/k/v and rotary.
"""
from __future__ import annotations


BIG = 1 << 62           # a Slice end at or past this means "to the end"


def packed_source(g, q: str, k: str, v: str, heads: int, kv: int, hd: int) -> str | None:
    """q, k: the rotated (1,N,S,hd) tensors; v: the (1,kv,S,hd) tensor → T or None."""
    half = hd // 2
    xq, xk = _rotary_input(g, q, half, hd), _rotary_input(g, k, half, hd)
    if xq is None or xk is None:
        return None
    parts = [_head_split(g, x, n) for x, n in ((xq, heads), (xk, kv), (v, kv))]
    if any(p is None for p in parts) or len({t for t, _, _ in parts}) != 1:
        return None
    bounds = [(a, b) for _, a, b in parts]
    nq, nkv = heads * hd, kv * hd
    if bounds[:2] != [(0, nq), (nq, nq + nkv)] or bounds[2][0] != nq + nkv or bounds[2][1] < nq + 2 * nkv:
        return None
    return parts[0][0]


def _op(g, tensor: str, op_type: str):
    node = g.producer.get(tensor)
    return node if node is not None and node.op_type == op_type else None


def _slice(g, tensor: str, rank: int):
    """Slice(x, start, end) along the last axis (x of `rank`) → (x, start, end) or None."""
    node = _op(g, tensor, "Slice")
    if node is None or len(node.input) < 4:
        return None
    starts, ends, axes = (g.ints(node.input[j]) for j in (1, 2, 3))
    steps = g.ints(node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
    if None in (starts, ends, axes, steps) or len(axes) != 1 or axes[0] not in (-1, rank - 1) or steps != [1]:
        return None
    return node.input[0], starts[0], min(ends[0], BIG)


def _rotary_input(g, rotated: str, half: int, hd: int) -> str | None:
    """rotated = x·cos + rotate_half(x)·sin → x, or None."""
    add = _op(g, rotated, "Add")
    if add is None:
        return None
    muls = [_op(g, t, "Mul") for t in add.input]
    if None in muls:
        return None
    by = {}
    for m in muls:
        table = [t for t in m.input if t in ("cos", "sin")]
        if len(table) != 1:
            return None
        by[table[0]] = next(t for t in m.input if t != table[0])
    if set(by) != {"cos", "sin"}:
        return None
    x, turned = by["cos"], _op(g, by["sin"], "Concat")
    if turned is None or len(turned.input) != 2 or _axis(turned) not in (-1, 3):
        return None
    neg = _op(g, turned.input[0], "Neg")
    upper = _slice(g, neg.input[0], 4) if neg is not None else None
    lower = _slice(g, turned.input[1], 4)
    if upper is None or upper[:2] != (x, half) or upper[2] < hd or lower != (x, 0, half):
        return None
    return x


def _head_split(g, x: str, heads: int):
    """x = Transpose(Reshape(Slice(T, a, b)), 0,2,1,3) with the Reshape to (1,-1,heads,hd)
    → (T, a, b), or None."""
    t = _op(g, x, "Transpose")
    if t is None or _perm(t) != [0, 2, 1, 3]:
        return None
    r = _op(g, t.input[0], "Reshape")
    shape = g.ints(r.input[1]) if r is not None else None
    if shape is None or len(shape) != 4 or shape[2] != heads:
        return None
    return _slice(g, r.input[0], 3)


def _axis(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
