"""The int4 ONNX export streamed from the checkpoint (fusion_edge/streamed.py, issue 29): the
same graphs and manifest as today's export through an fp32 bundle, its gate passed without
--force, and never more than one graph's fp32 files on disk."""
from __future__ import annotations

import filecmp
import json
import os
import threading
import time
from pathlib import Path

import pytest

from fusion_edge.quantize import agreement
from fusion_edge.runtime.bundle import MANIFEST, Bundle

pytestmark = pytest.mark.xdist_group("test_streamed")    # its module fixtures export two bundles: one worker

STEPS = 6
# manifest fields that differ between any two exports (time) or by how the gate compares
PER_RUN = ("created", "verification")


def _listing(folder: Path) -> dict[str, int]:
    """Relative path → bytes of every file under `folder` (files removed meanwhile left out)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            try:
                out[os.path.relpath(path, folder)] = os.path.getsize(path)
            except OSError:          # removed between listing and size: the exporter is quick
                pass
    return out


def _graph_of(path: str) -> str:
    """The graph a file belongs to: vision.onnx, .trace-x/vision.onnx, vision-inferred.onnx
    (onnxruntime's quantizer writes it beside its source), segment_10.onnx.data → its name."""
    return os.path.basename(path).split(".")[0].removesuffix("-inferred")


class DiskSampler:
    """Lists the files under `folder` every `period` s in a thread, until stopped: the peak of
    their bytes, and the graphs whose files were there at the same time, per sample."""

    def __init__(self, folder: Path, period: float = 0.005):
        self.folder, self.period, self.peak, self.samples = folder, period, 0, 0
        self.together: set[frozenset[str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            files = _listing(self.folder)
            self.peak = max(self.peak, sum(files.values()))
            self.together.add(frozenset(map(_graph_of, files)))
            self.samples += 1
            time.sleep(self.period)

    def stop(self) -> "DiskSampler":
        self._stop.set()
        self._thread.join()
        return self


@pytest.fixture(scope="module")
def todays(verified_fp32, recording, tmp_path_factory):
    """Today's int4 export: the verified fp32 bundle of the tiny checkpoint, quantized with `recording`."""
    from fusion_edge.targets import export_bundle
    return export_bundle(str(verified_fp32), tmp_path_factory.mktemp("today") / "q4", "onnx", "int4", steps=STEPS,
                         progress=False, calib=str(recording.path), eval_cases=1)


@pytest.fixture(scope="module")
def streamed(tiny_checkpoint, recording, tmp_path_factory):
    """The same export from the checkpoint, streamed (fusion-export CKPT --calib DIR): → (bundle,
    the fp32 files in the scratch folder at each graph, the peak bytes of the work folder)."""
    from fusion_edge.targets import export_bundle
    from fusion_edge.workspace import work_folder
    out = tmp_path_factory.mktemp("streamed") / "q4"
    seen: list[dict[str, int]] = []

    def on_graph(scratch: Path) -> None:        # what is on disk in the scratch folder, for real
        seen.append({p.name: p.stat().st_size for p in scratch.iterdir()})
    work = work_folder(out)
    work.mkdir(parents=True)              # sampled from the start; the export holds it (work_area)
    sampler = DiskSampler(work)
    try:
        path = export_bundle(str(tiny_checkpoint("phi3", "so400m")), out, "onnx", "int4", steps=STEPS,
                             progress=False, calib=str(recording.path), eval_cases=1, on_graph=on_graph)
    finally:
        sampler.stop()
    assert not work.exists()              # the work folder is removed with the export done
    return path, seen, sampler


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_streamed_graphs_are_todays_byte_for_byte(todays, streamed):
    """Every file of the bundle (graphs, shared LLM weights, decode graphs, tokenizer) is the
    same bytes; the manifest the same but for its date and the gate's figures."""
    out, _, _ = streamed
    files = [f for f in _files(todays) if f != MANIFEST]
    assert files == [f for f in _files(out) if f != MANIFEST]
    assert {"vision.onnx", "embed.onnx", "align_00.onnx", "segment_10.onnx", "llm.onnx.data",
            "decode.onnx"} <= set(files)
    _, mismatch, errors = filecmp.cmpfiles(todays, out, files, shallow=False)
    assert not mismatch and not errors
    a, b = (json.loads((p / MANIFEST).read_text()) for p in (todays, out))
    assert {k: v for k, v in a.items() if k not in PER_RUN} == {k: v for k, v in b.items() if k not in PER_RUN}


@pytest.mark.slow
def test_streamed_bundle_passes_its_gate_against_the_reference(todays, streamed):
    """Gated without --force against the PyTorch reference alone (no fp32 bundle exists), with
    today's int4 bounds; its figures are today's PyTorch-reference ones."""
    out, _, _ = streamed
    b = Bundle.open(out)
    assert b.verification_status == "passed"
    v, today = b.manifest["verification"], Bundle.open(todays).manifest["verification"]
    assert v["passed"] and not v["forced"] and v["thresholds"] == agreement.GATES["int4"]
    assert v["reference"].startswith(agreement.PYTORCH) and "pytorch_reference" not in v
    ref = today["pytorch_reference"]          # today: fp32 pipeline at the top, the reference beneath
    assert v["tokens_compared"] == ref["tokens_compared"] and v["top1_agreement"] == ref["top1_agreement"]
    assert v["logit_cosine_mean"] == pytest.approx(ref["logit_cosine_mean"], abs=1e-6)


@pytest.mark.slow
def test_streamed_export_never_holds_more_than_one_fp32_graph(streamed, verified_fp32):
    """At each graph the scratch folder holds that graph's fp32 file(s) only; listed every 5 ms
    during the export, the work folder never held the files of two graphs at once, and at most
    three copies of the largest graph (the finished graph, and for a moment torch's trace or
    the quantizer's `-inferred` copy beside it) — far from the fp32 bundle."""
    _, seen, disk = streamed
    src = Bundle.open(verified_fp32)
    names = [n for n in sorted(src.components) if not n.startswith("decode")]
    assert [sorted(s) for s in seen] == [[f"{n}.onnx"] for n in names]     # tiny graphs: no .data beside
    assert disk.samples > 100 and max(map(len, disk.together)) == 1
    seen_there = set().union(*disk.together)          # a graph done within a few ms can pass unsampled
    assert seen_there <= set(names) and "vision" in seen_there and len(seen_there) > len(names) // 2
    graph_bytes = {n: s[f"{n}.onnx"] for n, s in zip(names, seen)}
    fp32_bundle = sum(_listing(verified_fp32).values())
    assert 0 < disk.peak <= 3 * max(graph_bytes.values()) < fp32_bundle / 2
    assert sum(graph_bytes.values()) > fp32_bundle / 2      # the graphs that passed through: a whole model


def test_streamed_only_for_onnx_int4_of_a_checkpoint_with_a_recording(tiny_checkpoint, tmp_path):
    from fusion_edge.targets import streams
    from fusion_edge.workspace import needed_bytes
    ckpt = str(tiny_checkpoint("phi3", "so400m"))
    rec, data, bundle = tmp_path / "rec", tmp_path / "images", tmp_path / "fp32"
    for d in (rec, data, bundle):
        d.mkdir()
    (rec / "calibration.json").write_text("{}")      # what makes a folder a recording (Recordings.is_recording)
    (bundle / MANIFEST).write_text("{}")             # … and a bundle (calibration/source.py is_bundle)
    base = {"target": "onnx", "precision": "int4", "calib": str(rec)}
    assert streams(ckpt, base)
    assert not streams(str(bundle), base)                            # an fp32 bundle: quantized as it is
    assert not streams(ckpt, {**base, "calib": str(data)})           # data to record: needs the fp32 pipeline
    assert not streams(ckpt, {**base, "calib": None})
    assert not streams(ckpt, {**base, "precision": "int8"})          # its segments are calibrated too
    assert not streams(ckpt, {**base, "target": "trt"})
    # the disk check asks for the bundle's bytes only, not the fp32 bundle's besides
    full, lean = needed_bytes(ckpt, "onnx", "int4"), needed_bytes(ckpt, "onnx", "int4", streamed=True)
    assert lean is not None and full is not None and 6 * lean < full
