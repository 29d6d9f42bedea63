"""The bad-input corpus for checkpoints and bundles (tests/corpus/), through the Python API
and the command line (`ask`, `export`, `verify`): every damaged input fails with its typed
error — exit code 2, one `error:` and one `fix:` line, no traceback — within a bounded time,
and an export from a damaged checkpoint leaves no bundle."""
from __future__ import annotations

import shutil

import pytest

from fusion_edge.cli import main
from fusion_edge.runtime import errors
from fusion_edge.runtime.pipeline import Pipeline
from tests.corpus import assert_clean_failure, bounded
from tests.corpus import bundles as bundle_corpus
from tests.corpus import checkpoints as checkpoint_corpus

QUESTION = "What is on the table?"


@pytest.mark.parametrize("name,sharded,break_,expect", checkpoint_corpus.CASES,
                         ids=[c[0] for c in checkpoint_corpus.CASES])
def test_damaged_checkpoint(name, sharded, break_, expect, tiny_checkpoint, images, tmp_path, capsys):
    from fusion_edge.export.reference import FusionReference
    src = tiny_checkpoint("phi3", "so400m", shards=3) if sharded else tiny_checkpoint("phi3", "so400m")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    break_(ckpt)
    with pytest.raises(getattr(errors, expect)):
        bounded(lambda: FusionReference.load(str(ckpt)))
    rc = bounded(lambda: main(["ask", "--model", str(ckpt), "--image", str(images["wide"]), "--question", QUESTION,
                               "--max-new-tokens", "1"]))
    assert_clean_failure(rc, capsys.readouterr().err)
    out = tmp_path / "bundle"
    rc = bounded(lambda: main(["export", str(ckpt), "-o", str(out), "--quiet"]))
    assert_clean_failure(rc, capsys.readouterr().err)
    assert not out.exists() and not list(tmp_path.glob(".bundle.partial-*"))


def _damaged_copy(src, other, break_, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(src, folder)
    break_(folder, other)
    return folder


@pytest.mark.parametrize("name,break_,expect", bundle_corpus.CASES, ids=[c[0] for c in bundle_corpus.CASES])
def test_damaged_onnx_bundle(name, break_, expect, onnx_bundle, tiny_checkpoint, images, tmp_path, capsys):
    folder = _damaged_copy(onnx_bundle("phi3", "so400m"), onnx_bundle("llama3", "siglip2"), break_, tmp_path)
    _assert_refused(folder, expect, tiny_checkpoint("phi3", "so400m"), images, capsys)


@pytest.fixture(scope="module")
def gguf_pair(gguf_bundle):
    return [gguf_bundle("phi3", "so400m"), gguf_bundle("llama3", "siglip2")]


@pytest.mark.parametrize("name,break_,expect", bundle_corpus.GGUF_CASES, ids=[c[0] for c in bundle_corpus.GGUF_CASES])
@pytest.mark.slow
def test_damaged_gguf_bundle(name, break_, expect, gguf_pair, tiny_checkpoint, images, tmp_path, capsys):
    folder = _damaged_copy(gguf_pair[0], gguf_pair[1], break_, tmp_path)
    _assert_refused(folder, expect, tiny_checkpoint("phi3", "so400m"), images, capsys)


def _assert_refused(folder, expect, ckpt, images, capsys) -> None:
    with pytest.raises(getattr(errors, expect)):
        bounded(lambda: Pipeline.open(folder, device="cpu"))
    rc = bounded(lambda: main(["ask", "--bundle", str(folder), "--image", str(images["wide"]), "--question",
                               QUESTION, "--max-new-tokens", "1"]))
    assert_clean_failure(rc, capsys.readouterr().err)
    rc = bounded(lambda: main(["verify", str(folder), "--model", str(ckpt), "--steps", "1"]))
    assert_clean_failure(rc, capsys.readouterr().err)
