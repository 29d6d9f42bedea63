"""bench/kernels.py: every form runs on onnxruntime and its error against fp32 is the
quantization's own (small widths: the speed figures need real ones, see the module)."""
from __future__ import annotations

import json
import subprocess
import sys

from fusion_edge.bench import kernels


def test_every_form_runs_and_its_error_matches_its_bits(tmp_path):
    out = tmp_path / "k.json"
    assert kernels.main(["--shape", "256,384", "--rows", "8", "--repeats", "1", "--block-sizes", "32", "128",
                         "--accuracy-levels", "0", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    forms = {r["form"]: r for r in report["forms"]}
    assert len(forms) == 2 + 2 * 2 * 2                    # fp32, U8S8, {4,8}-bit x 2 blocks x 2 levels
    assert forms["fp32"]["rel_err"] < 1e-5
    assert 0 < forms["int8 dynamic U8S8"]["rel_err"] < 0.03
    for name, r in forms.items():
        assert r["prefill_ms"] > 0 and r["row_ms"] > 0 and r["gop_per_s"] > 0
        if name.startswith("MatMulNBits 8-bit"):
            assert 0 < r["rel_err"] < 0.03, (name, r)
        elif name.startswith("MatMulNBits 4-bit"):   # 16 levels: several % of the output range
            assert 0.01 < r["rel_err"] < 0.25, (name, r)
    assert report["provenance"]["command"].startswith("python3 -m fusion_edge.bench.kernels --shape 256,384")


def test_an_unknown_shape_names_the_choices():
    r = subprocess.run([sys.executable, "-m", "fusion_edge.bench.kernels", "--shape", "mpl"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "one of mlp, lm_head or K,N" in r.stderr and "Traceback" not in r.stderr
