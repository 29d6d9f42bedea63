"""The export gate end to end: a deliberately broken export (a corrupted weight, mis-wired
graphs) is refused by the real verification against the PyTorch reference and leaves no
bundle, for onnx fp32, onnx fp16 and gguf fp32. With --force the bundle is kept, marked
`forced`, warned about on opening, and refused by --strict; --no-verify is marked `skipped`.

The files come from a real export; the break is applied between writing the files and the
verification, inside the one export sequence (runtime/bundle.py write_bundle)."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fusion_edge.export.bundle_export import verify_folder
from fusion_edge.export.checkpoint import open_checkpoint
from fusion_edge.runtime.bundle import Bundle, write_bundle
from fusion_edge.runtime.errors import ExportError, UnverifiedBundleError
from fusion_edge.runtime.pipeline import Pipeline

STEPS = 4
MANIFEST_DROPPED = ("format", "format_version", "created", "files", "verification", "verification_status")


def negate_lm_head(folder) -> None:
    """The final segment's largest weight (the lm_head, H×V) times -1: every top-1 flips."""
    path = folder / "segment_10.onnx"
    model = onnx.load(str(path))
    head = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    head.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(head), head.name))
    onnx.save(model, str(path))


def swap_alignment_graphs(folder) -> None:
    """align_02 and align_07 exchanged: same inputs and outputs, the wrong layer's weights."""
    a, b, tmp = folder / "align_02.onnx", folder / "align_07.onnx", folder / "swap.onnx"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def scale_gguf_output(folder) -> None:
    """llm.gguf's output.weight times -1, written in place through gguf's memory map."""
    import gguf
    reader = gguf.GGUFReader(str(folder / "llm.gguf"), "r+")
    t = next(t for t in reader.tensors if t.name == "output.weight")
    t.data[...] = -t.data
    reader.data.flush()


CASES = [
    ("onnx fp32, corrupted lm_head", "onnx", "fp32", negate_lm_head),
    ("onnx fp32, mis-wired alignment graphs", "onnx", "fp32", swap_alignment_graphs),
    ("onnx fp16, corrupted lm_head", "onnx", "fp16", negate_lm_head),
    ("gguf fp32, corrupted output weight", "gguf", "fp32", scale_gguf_output),
]


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return open_checkpoint(str(tiny_checkpoint("phi3", "so400m")))


@pytest.fixture(scope="module")
def source(onnx_bundle, request):
    """source(target, precision) → an unverified bundle from a real export (the session's, shared)."""
    def get(target: str, precision: str):
        if target == "onnx":
            return onnx_bundle("phi3", "so400m", precision=precision)
        return request.getfixturevalue("gguf_bundle")("phi3", "so400m", precision)   # skips without the extra
    return get


def broken_export(src, breaker, out, ckpt, target, precision, force):
    """The export sequence with `src`'s files, broken by `breaker` before the real verification."""
    def fill(writer):
        shutil.copytree(src, writer.tmp, dirs_exist_ok=True)
        breaker(writer.tmp)
        return {k: v for k, v in Bundle.open(src, check_hashes=False).manifest.items() if k not in MANIFEST_DROPPED}

    def check(folder):
        return verify_folder(folder, ckpt, STEPS, precision, force, target=target)
    return write_bundle(out, fill, check)


@pytest.mark.parametrize("name,target,precision,breaker", CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_a_broken_export_is_refused_and_leaves_no_bundle(name, target, precision, breaker, source, ckpt, tmp_path,
                                                         caplog):
    out = tmp_path / "broken"
    caplog.set_level(logging.INFO, logger="fusion_edge")
    with pytest.raises(ExportError, match="does not match the reference closely enough") as e:
        broken_export(source(target, precision), breaker, out, ckpt, target, precision, False)
    assert "--force" in e.value.fix
    assert any("gate: FAILED" in line for line in caplog.messages)
    assert not out.exists() and not list(tmp_path.glob(".broken.partial-*"))


@pytest.mark.slow
def test_forced_and_skipped_bundles_are_marked_warned_about_and_refused_by_strict(source, ckpt, tmp_path, images,
                                                                                  capsys):
    from fusion_edge.cli import main
    kept = broken_export(source("onnx", "fp32"), negate_lm_head, tmp_path / "forced", ckpt, "onnx", "fp32", True)
    bundle = Bundle.open(kept)
    assert bundle.verification_status == "forced" and not bundle.manifest["verification"]["passed"]
    pipe = Pipeline.open(kept, device="cpu")
    assert "below its quality gate, kept with --force" in pipe.verification_warning
    with pytest.raises(UnverifiedBundleError):
        Pipeline.open(kept, device="cpu", strict=True)

    skipped = source("onnx", "fp32")                      # the session fixture exports with verify=False
    assert Bundle.open(skipped).verification_status == "skipped"
    args = ["ask", "--bundle", str(skipped), "--image", str(images["wide"]), "--question", "What is it?",
            "--max-new-tokens", "2", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "warning: bundle" in captured.err and "exported with --no-verify" in captured.err
    assert '"verification": "skipped"' in captured.out
    assert main(args + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bundle") and "--strict refuses it" in err and "fix:" in err


@pytest.mark.slow
def test_a_verified_bundle_opens_without_a_warning(tiny_checkpoint, tmp_path):
    from fusion_edge.export.bundle_export import export_bundle
    out = export_bundle(str(tiny_checkpoint("phi3", "so400m")), tmp_path / "ok", steps=STEPS, progress=False)
    assert Bundle.open(out).verification_status == "passed"
    assert Pipeline.open(out, device="cpu", strict=True).verification_warning is None
