"""The int8 path of the CPU EP (runtime/cpu_features.py): VNNI detection, the exact option
where VNNI is missing, the override, and that every session gets it."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusion_edge.runtime import cpu_features
from fusion_edge.runtime.backends.ort_session import make_session
from fusion_edge.runtime.errors import OptionError

CPU = ["CPUExecutionProvider"]


def precise_entry(sess) -> str:
    """The session's session.x64quantprecision entry ("" when unset)."""
    try:
        return sess.get_session_options().get_session_config_entry(cpu_features.PRECISE_KEY)
    except RuntimeError:        # onnxruntime: "SessionOptions does not have configuration with key"
        return ""


@pytest.mark.parametrize("flags, vnni", [
    ({"sse4_2", "avx2", "avx512bw"}, False),           # Skylake-SP: vpmaddubsw saturates
    ({"avx2", "avx512bw", "avx512_vnni"}, True),        # Cascade Lake and later
    ({"avx2", "avx_vnni"}, True),                       # Alder Lake
    ({"avx2", "amx_int8", "amx_tile"}, True),
    (set(), False),                                     # unknown: the exact path
])
def test_vnni_detection_from_cpu_flags(flags, vnni):
    assert cpu_features.has_vnni(frozenset(flags)) is vnni


def test_the_path_follows_the_cpu_and_the_override(monkeypatch):
    monkeypatch.delenv(cpu_features.ENV, raising=False)
    detected = cpu_features.int8_path()
    assert detected in cpu_features.PATHS
    if detected in ("vnni", "precise"):      # x86
        assert (detected == "vnni") is cpu_features.has_vnni()
    assert cpu_features.int8_session_config() == ({cpu_features.PRECISE_KEY: "1"} if detected == "precise" else {})
    monkeypatch.setenv(cpu_features.ENV, "precise")
    assert cpu_features.int8_session_config() == {cpu_features.PRECISE_KEY: "1"}
    assert cpu_features.describe()["int8_path"] == "precise"
    monkeypatch.setenv(cpu_features.ENV, "VNNI")
    assert cpu_features.int8_session_config() == {}
    monkeypatch.setenv(cpu_features.ENV, "fast")
    with pytest.raises(OptionError, match="not an int8 path"):
        cpu_features.int8_path()


def _qdq_matmul(path, rows: int = 8, k: int = 256, n: int = 64) -> np.ndarray:
    """A U8S8 Q/DQ MatMul (uint8 activations, int8 weights) with large-magnitude operands:
    where vpmaddubsw pairs would saturate int16 (255·127·2 > 32767)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(k, n)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "ws")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w


def test_u8s8_products_are_exact_on_the_path_this_machine_takes(tmp_path, monkeypatch):
    """The detected path and the forced exact path both give the exact int32 product of a
    saturation-prone U8S8 MatMul (on a CPU without VNNI the first one is the exact path itself)."""
    path = tmp_path / "qdq.onnx"
    w = _qdq_matmul(path)
    x = np.full((8, 256), 250.0, np.float32)
    x[:, ::3] = 3.0
    exact = x.astype(np.int64) @ w.astype(np.int64)
    for forced in ("", "precise"):
        monkeypatch.setenv(cpu_features.ENV, forced) if forced else monkeypatch.delenv(cpu_features.ENV, raising=False)
        sess = make_session(path, CPU)
        want = "1" if cpu_features.int8_path() == "precise" else ""
        assert precise_entry(sess) == want
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], exact.astype(np.float32))
