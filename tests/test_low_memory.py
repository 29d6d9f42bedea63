"""Low-memory sessions: weights stay memory-mapped from the bundle instead of a prepacked copy
per onnxruntime session (runtime/memory.py, ort_session.make_session). Same answers, less
anonymous memory, and calibration picks the mode itself when the weights do not fit."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from fusion_edge.runtime import memory
from fusion_edge.runtime.bundle import Bundle
from fusion_edge.runtime.pipeline import Pipeline

QUESTION = "What is on the table?"


@pytest.mark.slow
def test_low_memory_gives_the_same_answer(bundle, images):
    """Unpacked weights take another GEMM path: rounding only (measured max |Δlogit| 1.3e-5 on
    logits up to ~50, 3-4 float32 ulps); held to the fp32 bundles' own bound against the
    reference (1e-4, docs/fusion.md, tests/test_onnx.py)."""
    answers = []
    for low in (False, True):
        pipe = Pipeline.open(bundle, device="cpu", threads=1, low_memory=low)
        pipe.ask(pipe.look(images["wide"]), QUESTION, max_new_tokens=8)
        answers.append(pipe.last_result)
    normal, low = answers
    assert low.token_ids == normal.token_ids
    np.testing.assert_allclose(low.first_logits, normal.first_logits, rtol=0, atol=1e-4)


ANON = """
import json, sys
from fusion_edge.runtime.bundle import Bundle
from fusion_edge.runtime.backends.onnx_llm import OnnxLLM
import onnxruntime
def anon():
    with open('/proc/self/smaps_rollup') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith('Anonymous:'))
bundle = Bundle.open(sys.argv[1])
before = anon()
engine = OnnxLLM(bundle, 'cpu', 1, low_memory=sys.argv[2] == '1')
print(json.dumps(anon() - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps_rollup (Linux)")
def test_low_memory_keeps_the_llm_weights_out_of_anonymous_memory(bundle):
    """Normally the segments and the decode graph each prepack the shared LLM weights (twice
    llm.onnx.data in anonymous memory; measured 47.0 vs 37.6 MiB on the tiny bundle, whose
    llm.onnx.data is 5.2 MiB); low-memory sessions read them from the mapped file."""
    def grown(low: bool) -> int:
        out = subprocess.run([sys.executable, "-c", ANON, str(bundle), "1" if low else "0"], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    shared = (bundle / "llm.onnx.data").stat().st_size
    assert grown(False) - grown(True) >= 1.2 * shared


def test_packed_bytes_count_the_shared_llm_weights_twice(bundle):
    m = Bundle.open(bundle).manifest
    onnx_files = sum(int(f["bytes"]) for n, f in m.files.items() if n.endswith((".onnx", ".onnx.data")))
    assert memory.packed_bytes(m) == onnx_files + int(m.files["llm.onnx.data"]["bytes"])
    need = memory.packed_bytes(m)
    assert memory.needs_low_memory(m, available=int(need / memory.HEADROOM) - 1)
    assert not memory.needs_low_memory(m, available=int(need / memory.HEADROOM) + 1)


def test_calibration_switches_to_low_memory_when_the_weights_do_not_fit(bundle, tmp_path, monkeypatch, caplog):
    from fusion_edge.calibration.calibrate import calibrate_bundle
    opened = []
    real_open = Pipeline.open.__func__

    def spy(cls, *a, **kw):                       # records the mode; the real pipeline runs
        opened.append(kw.get("low_memory"))
        return real_open(cls, *a, **kw)
    monkeypatch.setattr(Pipeline, "open", classmethod(spy))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)       # a 1 MiB machine
    caplog.set_level(logging.INFO, logger="fusion_edge")
    rec = calibrate_bundle(bundle, tmp_path / "rec", samples=1, holdout=0, progress=False)
    assert opened == [True] and rec.manifest["samples"] == 1
    assert any("memory-mapped" in line for line in caplog.messages)


@pytest.mark.slow
def test_ask_low_memory_flag_answers_the_same(bundle, images, capsys):
    from fusion_edge.cli import main
    args = ["ask", "--bundle", str(bundle), "--image", str(images["tall"]), "--question", QUESTION,
            "--max-new-tokens", "6", "--json"]
    assert main(args) == 0
    normal = json.loads(capsys.readouterr().out)
    assert main(args + ["--low-memory"]) == 0
    low = json.loads(capsys.readouterr().out)
    assert low["token_ids"] == normal["token_ids"] and low["text"] == normal["text"]
