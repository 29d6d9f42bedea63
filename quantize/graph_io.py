"""Loading and saving ONNX graphs for the quantizers, and counting their weight bytes.

Graphs above 1 GiB keep their weights in `<name>.onnx.data` (the protobuf limit is 2 GiB),
as the exporter does; smaller ones are one file.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
from onnx import TensorProto

EXTERNAL_DATA_BYTES = 1 << 30


def load(path: Path):
    import onnx
    return onnx.load(str(path), load_external_data=True)


def load_structure(path: Path):
    """The graph without its external weights (initializers keep names, shapes and types)."""
    import onnx
    return onnx.load(str(path), load_external_data=False)


def has_external_data(path: Path) -> bool:
    """Whether any initializer of the graph at `path` lives in an external file — its own
    `<name>.data` or a shared one (the LLM segments' `llm.onnx.data`). Read without the
    weights."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    model = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in model.graph.initializer)


def save(model, path: Path) -> list[str]:
    """Write `model` to `path` → the bundle file names it occupies."""
    import onnx
    path = Path(path)
    for stale in path.parent.glob(path.name + "*.data"):
        stale.unlink()
    size = _byte_size(model)
    if size is None or size > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        return [path.name, path.name + ".data"]
    onnx.save_model(model, str(path))
    return [path.name]


def _byte_size(model) -> int | None:
    try:
        return model.ByteSize()
    except Exception:      # protobuf refuses to size a message above 2 GiB
        return None


def stored_bytes(path: Path) -> int:
    """Bytes a graph occupies on disk: its file plus the bytes its initializers reference in
    external-data files (a shared file such as llm.onnx.data counts only this graph's part)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    external = sum(int({e.key: e.value for e in t.external_data}.get("length", 0))
                   for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    return Path(path).stat().st_size + external


LOW_BIT_TYPES = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8", TensorProto.UINT4: "uint4",
                 TensorProto.INT4: "int4"}
FOUR_BIT_TYPES = (TensorProto.UINT4, TensorProto.INT4)


def weight_bytes(model) -> dict[str, int]:
    """Bytes of the graph's initializers by element type name (4-bit types counted packed)."""
    from onnx import helper
    out: dict[str, int] = {}
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        if t.data_type in FOUR_BIT_TYPES:
            name, bits = LOW_BIT_TYPES[t.data_type], 4
        else:
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            name, bits = dtype.name, 8 * dtype.itemsize
        out[name] = out.get(name, 0) + (n * bits + 7) // 8
    return out


def quantized_weight_count(model) -> int:
    """Weights stored in 8 or 4 bits: DequantizeLinear / MatMulNBits / MatMulInteger (dynamic
    int8) / DynamicQuantizeMatMul nodes fed by such a constant."""
    low = {t.name for t in model.graph.initializer if t.data_type in LOW_BIT_TYPES}
    weight_input = {"DequantizeLinear": 0, "MatMulNBits": 1, "MatMulInteger": 1, "ConvInteger": 1,
                    "DynamicQuantizeMatMul": 1}       # which input holds the weight
    return sum(1 for n in model.graph.node if n.op_type in weight_input and n.input[weight_input[n.op_type]] in low)


@contextlib.contextmanager
def quiet_ort_logging():
    """onnxruntime.quantization logs advice through the root logger at WARNING; keep the
    progress bars readable (errors still raise)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
