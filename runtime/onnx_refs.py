"""The files an ONNX graph makes onnxruntime open: every external-data `location` of its tensors.

Read from the protobuf wire format directly (the runtime does not depend on the `onnx`
package), without loading tensor bytes: length-delimited fields are skipped by offset over a
memory map. Covers the tensors of the main graph, of subgraphs in node attributes (If, Loop,
Scan) and of functions, sparse tensors included.
"""
from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import cast
from pathlib import Path

from . import protowire
from .protowire import WireError

# field numbers of onnx.proto (ModelProto / GraphProto / NodeProto / AttributeProto / TensorProto)
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE = 1, 5, 15
FUNCTION_NODE = 7
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA = 13
ENTRY_KEY, ENTRY_VALUE = 1, 2


def _fields(buf) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, bytes of a length-delimited field or None) for every field of a message."""
    for number, wire, value in protowire.fields(buf):
        yield number, (cast(memoryview, value) if wire == protowire.LEN else None)


def _tensor(buf) -> Iterator[str]:
    for field, sub in _fields(buf):
        if field == TENSOR_EXTERNAL_DATA and sub is not None:
            entry = {f: bytes(v).decode("utf-8", "replace") for f, v in _fields(sub) if v is not None}
            if entry.get(ENTRY_KEY) == "location":
                yield entry.get(ENTRY_VALUE, "")


def _sparse(buf) -> Iterator[str]:
    for field, sub in _fields(buf):
        if field in (SPARSE_VALUES, SPARSE_INDICES) and sub is not None:
            yield from _tensor(sub)


def _node(buf) -> Iterator[str]:
    for field, attr in _fields(buf):
        if field != NODE_ATTRIBUTE or attr is None:
            continue
        for f, sub in _fields(attr):
            if sub is None:
                continue
            if f in (ATTR_T, ATTR_TENSORS):
                yield from _tensor(sub)
            elif f in (ATTR_G, ATTR_GRAPHS):
                yield from _graph(sub)
            elif f in (ATTR_SPARSE, ATTR_SPARSES):
                yield from _sparse(sub)


def _graph(buf) -> Iterator[str]:
    for field, sub in _fields(buf):
        if sub is None:
            continue
        if field == GRAPH_INITIALIZER:
            yield from _tensor(sub)
        elif field == GRAPH_SPARSE:
            yield from _sparse(sub)
        elif field == GRAPH_NODE:
            yield from _node(sub)


def external_locations(path: Path) -> set[str]:
    """The external-data locations (as written, relative to the graph's folder) of ONNX file `path`.
    Raises WireError when the file is not a well-formed ModelProto."""
    with open(path, "rb") as f:
        if Path(path).stat().st_size == 0:
            raise WireError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                return set(_model(buf))
            finally:
                buf.release()


def _model(buf) -> Iterator[str]:
    for field, sub in _fields(buf):
        if field == MODEL_GRAPH and sub is not None:
            yield from _graph(sub)
        elif field == MODEL_FUNCTIONS and sub is not None:
            for f, node in _fields(sub):
                if f == FUNCTION_NODE and node is not None:
                    yield from _node(node)
