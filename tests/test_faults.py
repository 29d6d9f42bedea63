"""Faults during long work (issue 28 item 3): what a user meets when an export, a quantization,
a calibration recording or an engine build is killed (SIGKILL), fills its disk, or is pointed at
a read-only folder. Each time: no half bundle opens as a bundle, the next run removes or reuses
what the dead one left, the error is typed (error:/fix:, exit code 2, no traceback), and the
resumable steps — the calibration recording, the fp32 bundle of a quantized export, build-engines
— resume.

Every run here is the real command in its own process (`python -m fusion_edge.cli ...`), killed
with SIGKILL at a point seen from outside (a file it writes appears). Full and read-only disks
are tmpfs mounts (tests/fault_mounts.py: plain mount as root, else a user namespace, else
skipped). The one stand-in: onnxruntime's TensorRT EP, absent here, is replaced in the
build-engines tests by a session that writes engine files into the cache folder as the EP does
(as in tests/test_trt.py); everything around it — the manifest's engines record, the resume, the
typed errors — is the real code.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fusion_edge.runtime.bundle import Bundle, sha256_file
from fusion_edge.runtime.errors import BundleError, BundleFileError
from fusion_edge.runtime.trt import stamp

from fault_mounts import Tmpfs

# one xdist worker: its module fixtures record calibration and export a trt bundle once
pytestmark = pytest.mark.xdist_group("test_faults")

CLI = [sys.executable, "-m", "fusion_edge.cli"]
ORIN = stamp.Platform("10.3.0", "Orin", (8, 7))


# ---- helpers -------------------------------------------------------------------------------
def _start(argv, log: Path, runner=None) -> subprocess.Popen:
    f = open(log, "w")
    try:
        return (runner.popen if runner else subprocess.Popen)([str(a) for a in argv], stdout=f,
                                                              stderr=subprocess.STDOUT)
    finally:
        f.close()


def _kill_when(proc: subprocess.Popen, ready, what: str, log: Path, timeout: float = 900) -> None:
    """SIGKILL `proc` as soon as ready() holds; fails when it ended or timed out first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.05)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive and ready(), f"the run ended (rc {proc.returncode}) or timed out before {what}:\n{log.read_text()[-3000:]}"


def _run(argv, timeout: float = 900, runner=None) -> subprocess.CompletedProcess:
    if runner is not None:
        return runner.run(argv, timeout=timeout)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)


def _progress(partial: Path) -> dict:
    try:
        return json.loads((partial / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def _clean_failure(r: subprocess.CompletedProcess) -> tuple[str, str]:
    """rc 2, one error: line and one fix: line, no traceback → (error, fix)."""
    err = r.stderr
    assert r.returncode == 2, f"rc {r.returncode}\n{r.stdout[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in r.stdout
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    fixes = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("fix:")]
    assert len(errors) == 1 and len(fixes) == 1, err
    return errors[0], fixes[0]


# What an export or a calibration prints once it has started work (progress bars, notices).
WORK_STARTED = ("export onnx/", "exporting a temporary", "calibration set", "calibrate:", "no calibration data given",
                "recorded", "bundle written")


def _assert_no_work_started(r: subprocess.CompletedProcess) -> None:
    """Refused before any work: none of the progress lines of a started run was printed."""
    out = r.stdout + r.stderr
    assert not [m for m in WORK_STARTED if m in out], out[-3000:]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _arrays(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted(folder.rglob("*.npz")):
        with np.load(f) as z:
            out[f.relative_to(folder).as_posix()] = {k: z[k] for k in z.files}
    return out


def _same_recording(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "calibration.json").read_text()) for p in (a, b))
    for key in ("samples", "images", "bytes", "graphs", "record_skipped", "key", "options", "dtype", "held_out"):
        assert ma[key] == mb[key], key
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for name in xa:
        assert xa[name].keys() == xb[name].keys()
        for k in xa[name]:
            assert np.array_equal(xa[name][k], xb[name][k]), f"{name}:{k}"


# ---- 1. SIGKILL during an fp32 export -------------------------------------------------------
@pytest.mark.slow
def test_fp32_export_killed_at_each_stage_leaves_no_bundle_and_the_next_run_completes(
        tiny_checkpoint, onnx_bundle, tmp_path):
    """Killed while tracing the graphs, while writing the shared decode weights, and while
    verifying a complete (not yet renamed) folder: the output never appears, the dead run's
    `.partial-<pid>` folder does not open as a bundle (not even with its manifest written), the
    next run removes it, and the last one completes."""
    out = tmp_path / "b"
    argv = CLI + ["export", tiny_checkpoint("phi3", "so400m"), "-o", out, "--quiet", "--verify-steps", "2"]
    stages = [("the export started", lambda p: p.is_dir()),
              ("the shared decode weights are written", lambda p: (p / "llm.onnx.data").is_file()),
              ("the manifest is written and verification runs", lambda p: (p / "fusion_bundle.json").is_file())]
    previous = None
    for n, (what, reached) in enumerate(stages):
        log = tmp_path / f"run{n}.log"
        proc = _start(argv, log)
        partial = tmp_path / f".b.partial-{proc.pid}"
        _kill_when(proc, lambda r=reached, p=partial: r(p), what, log)
        if previous is not None:
            assert not previous.exists(), f"run {n} did not remove {previous.name} of the run it followed"
        assert not out.exists()
        with pytest.raises(BundleError):
            Bundle.open(out)
        with pytest.raises(BundleFileError, match="did not finish"):
            Bundle.open(partial)                      # its manifest, when written, does not make it one
        previous = partial
    # an --overwrite killed between its two renames leaves the old bundle as .b.old-<pid>
    old = tmp_path / f".b.old-{_dead_pid()}"
    shutil.copytree(onnx_bundle("phi3", "so400m"), old)
    r = _run(argv[:-2] + ["--no-verify"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert Bundle.open(out).verification_status == "skipped"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---- 2. SIGKILL during a quantized export: the fp32 bundle is reused, calibration resumes -------
@pytest.mark.slow
def test_int8_export_killed_in_calibration_and_in_quantization_resumes(tiny_checkpoint, tmp_path):
    out = tmp_path / "q"
    work = tmp_path / ".q.work"
    recording = work / ".calib.partial-resumable"
    argv = CLI + ["export", tiny_checkpoint("phi3", "so400m"), "--precision", "int8", "--no-verify",
                  "--calib-samples", "4", "-o", out, "--quiet"]
    # killed while recording the calibration, after 2 of its 4 pairs
    proc = _start(argv, tmp_path / "run0.log")
    _kill_when(proc, lambda: _progress(recording).get("done", 0) >= 2, "2 calibration pairs were recorded",
               tmp_path / "run0.log")
    done = _progress(recording)["done"]
    assert not out.exists()
    with pytest.raises(BundleError):
        Bundle.open(out)
    assert Bundle.open(work / "fp32").precision == "fp32"       # complete: its own write was atomic
    # killed again while quantizing: the recording resumed from where the first run stopped
    log = tmp_path / "run1.log"
    proc = _start(argv, log)
    partial = tmp_path / f".q.partial-{proc.pid}"
    _kill_when(proc, partial.is_dir, "quantization started", log)
    text = log.read_text()
    assert f"reusing the fp32 ONNX bundle an interrupted run left in {work / 'fp32'}" in text
    assert f"resuming the interrupted recording in {recording}: {done} of 4 pairs done" in text
    assert "exporting a temporary fp32" not in text
    assert (work / "calib" / "calibration.json").is_file() and not recording.exists()
    with pytest.raises(BundleFileError, match="did not finish"):
        Bundle.open(partial)
    # the third run reuses both, removes the dead quantization's folder and completes
    r = _run(argv)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "reusing the fp32 ONNX bundle" in r.stdout and f"calibration: reusing the recording in {work / 'calib'}" \
        in r.stdout
    b = Bundle.open(out)
    assert b.precision == "int8" and b.manifest["quantization"]["calibration"]["samples"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---- 3. SIGKILL during `fusion-edge calibrate`: the recording resumes to the same result --------
@pytest.fixture(scope="module")
def fp32(onnx_bundle):
    return onnx_bundle("phi3", "so400m")


@pytest.fixture(scope="module")
def uninterrupted(fp32, tmp_path_factory):
    """The recording of 5 built-in pairs made in one go: what a resumed one must equal."""
    out = tmp_path_factory.mktemp("calib-ref") / "ref"
    r = _run(CLI + ["calibrate", fp32, "-o", out, "--samples", "5", "--quiet"])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_calibration_killed_twice_resumes_its_own_inputs_and_restarts_others(fp32, uninterrupted, tmp_path):
    out = tmp_path / "calib"
    partial = tmp_path / ".calib.partial-resumable"
    argv = CLI + ["calibrate", fp32, "-o", out, "--samples", "5", "--quiet"]
    # a recording of other inputs (float32), killed: the next run of these inputs starts anew
    proc = _start(argv + ["--dtype", "float32"], tmp_path / "run0.log")
    _kill_when(proc, lambda: _progress(partial).get("done", 0) >= 1, "a pair was recorded", tmp_path / "run0.log")
    log = tmp_path / "run1.log"
    proc = _start(argv, log)
    _kill_when(proc, lambda: _progress(partial).get("done", 0) >= 2 and "other inputs" in log.read_text(),
               "2 pairs of the float16 recording", log)
    done = _progress(partial)["done"]
    assert not out.exists()
    r = _run(argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming the interrupted recording in {partial}: {done} of 5 pairs done" in r.stdout
    assert not partial.exists()
    _same_recording(out, uninterrupted)
    # the same command again: the output exists, a typed error (no --overwrite)
    error, fix = _clean_failure(_run(argv))
    assert "already exists" in error and "--overwrite" in fix


def test_recording_key_names_checkpoint_options_and_pairs(fp32):
    """A recording resumes or is reused only for the same checkpoint (fingerprint), dtype,
    --max-mb and pairs (their order, their image files' contents)."""
    from fusion_edge.calibration.builtin import builtin_pairs
    from fusion_edge.calibration.dataset import CalibItem
    from fusion_edge.calibration.record import recording_key
    from fusion_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.open(fp32, device="cpu")
    items = [CalibItem(k, img, q) for k, img, q in builtin_pairs("calib", 3)]
    src = {"fingerprint": "a" * 64}
    key = recording_key(src, pipe, "float16", 2048, items)
    assert key == recording_key(dict(src), pipe, "float16", 2048, list(items))
    assert key != recording_key({"fingerprint": "b" * 64}, pipe, "float16", 2048, items)
    assert key != recording_key(src, pipe, "float32", 2048, items)
    assert key != recording_key(src, pipe, "float16", 1024, items)
    assert key != recording_key(src, pipe, "float16", 2048, items[::-1])
    assert key != recording_key(src, pipe, "float16", 2048, items[:2])
    other = items[0].image.copy()
    other.putpixel((0, 0), (1, 2, 3))
    assert key != recording_key(src, pipe, "float16", 2048, [CalibItem(items[0].key, other, items[0].question)] + items[1:])


# ---- 4. disk full ---------------------------------------------------------------------------
@pytest.mark.slow
def test_export_into_a_full_disk(tiny_checkpoint, tmp_path):
    """A disk smaller than the bundle's weights: refused before any work, with the space needed.
    One that passes that check but fills up during the export: a DiskFullError, nothing left on
    the disk. After space is freed the same command completes."""
    with Tmpfs(tmp_path / "disk", 4) as fs:
        out = fs.where / "b"
        argv = CLI + ["export", tiny_checkpoint("phi3", "so400m"), "-o", out, "--quiet", "--no-verify"]
        r = _run([a for a in argv if a != "--quiet"], runner=fs)      # with progress output: none may appear
        error, fix = _clean_failure(r)
        _assert_no_work_started(r)
        need = re.search(rf"the disk of {re.escape(str(fs.where))} has 4\.0 MB free; the bundle {re.escape(str(out))} "
                         r"needs at least ([\d.]+) MB", error)
        assert need and 4.0 < float(need.group(1)) < 10.0, error        # the weights' bytes: under the bundle's
        assert f"on a disk with {need.group(1)} MB free" in fix
        seen = fs.inspect(out)
        assert seen["entries"] == [] and "does not exist" in seen["open_error"]
        fs.resize(9)                                   # over the weights, under the bundle (~10 MB)
        error, fix = _clean_failure(_run(argv, runner=fs))
        assert f"the disk filled up while writing the bundle {out}" in error and "9.0 MB free there" in error
        assert "Nothing half-written was kept" in error and "bigger disk" in fix
        assert fs.inspect(out)["entries"] == []       # the dead export's folder is gone, nothing else written
        fs.resize(32)
        r = _run(argv, runner=fs)
        assert r.returncode == 0, r.stderr[-3000:]
        seen = fs.inspect(out)
        assert seen["open_error"] is None and all(e == "b" or e.startswith("b/") for e in seen["entries"])


@pytest.mark.slow
def test_calibration_into_a_full_disk_keeps_its_samples_and_resumes(fp32, uninterrupted, tmp_path):
    with Tmpfs(tmp_path / "disk", 20) as fs:
        out = fs.where / "calib"
        argv = CLI + ["calibrate", fp32, "-o", out, "--samples", "5", "--quiet"]
        error, fix = _clean_failure(_run(argv, runner=fs))
        assert f"the disk filled up while writing the calibration recording {out}" in error
        assert "samples recorded so far" in error and "the same command resumes from them" in error
        assert "run the same command again" in fix
        entries = fs.inspect(out)["entries"]
        assert ".calib.partial-resumable/progress.json" in entries and "calib" not in entries
        fs.resize(64)
        r = _run(argv, runner=fs)
        assert r.returncode == 0 and "resuming the interrupted recording" in r.stdout, r.stderr[-3000:]
        copy = tmp_path / "copy"
        assert _run(["cp", "-r", out, copy], runner=fs).returncode == 0
    _same_recording(copy, uninterrupted)


@pytest.mark.slow
def test_quantized_export_into_a_full_disk_keeps_its_work_and_resumes(tiny_checkpoint, tmp_path):
    with Tmpfs(tmp_path / "disk", 24) as fs:
        out = fs.where / "q"
        argv = CLI + ["export", tiny_checkpoint("phi3", "so400m"), "--precision", "int8", "--no-verify",
                      "--calib-samples", "4", "-o", out, "--quiet"]
        error, fix = _clean_failure(_run(argv, runner=fs))
        assert "the disk filled up while writing" in error and "resumes" in error
        seen = fs.inspect(out)
        assert "does not exist" in seen["open_error"]
        assert ".q.work/fp32/fusion_bundle.json" in seen["entries"]
        assert not [e for e in seen["entries"] if ".partial-" in e and "resumable" not in e]
        fs.resize(64)
        r = _run(argv, runner=fs)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "reusing the fp32 ONNX bundle" in r.stdout and "exporting a temporary fp32" not in r.stdout
        seen = fs.inspect(out)
        assert seen["open_error"] is None and all(e == "q" or e.startswith("q/") for e in seen["entries"])


# ---- 5. read-only output folder -------------------------------------------------------------
@pytest.mark.slow
def test_read_only_output_is_refused_before_any_work(tiny_checkpoint, fp32, tmp_path):
    with Tmpfs(tmp_path / "ro", 1, ro=True) as fs:
        ckpt = tiny_checkpoint("phi3", "so400m")
        for argv in ([*CLI, "export", ckpt, "-o", fs.where / "b"],            # no --quiet: progress would show
                     [*CLI, "export", ckpt, "--precision", "int8", "-o", fs.where / "sub" / "q8"],
                     [*CLI, "calibrate", ckpt, "-o", fs.where / "calib"],
                     [*CLI, "calibrate", fp32, "-o", fs.where / "calib"]):
            r = _run(argv, runner=fs)
            error, fix = _clean_failure(r)
            assert f"{fs.where} is on a read-only file system" in error and str(argv[-1]) in error
            assert "on a writable disk" in fix
            _assert_no_work_started(r)
        assert fs.inspect(fs.where / "b")["entries"] == []


# ---- 6. build-engines: killed, full disk, read-only ---------------------------------------------
BUILD = textwrap.dedent('''
    """build-engines of bundle argv[1] with a session standing in for onnxruntime's TensorRT EP
    (absent here): it serializes an engine file of argv[4] KB into the graph's cache folder; at
    graph argv[2] it stops half-way (marker file argv[3]) until it is killed."""
    import logging, sys, time
    from pathlib import Path
    from fusion_edge.export.trt_engines import build_engines_checked
    from fusion_edge.runtime.backends.ort_session import provider_chain
    from fusion_edge.runtime.errors import FusionEdgeError
    from fusion_edge.runtime.trt.stamp import Platform
    bundle, block_at, marker, kb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)      # the build's lines

    def session(path, providers, config):
        name, opts = providers[0]
        graph = Path(path).stem
        with open(Path(opts["trt_engine_cache_path"]) / f"{graph}.engine", "wb") as f:
            f.write(graph.encode() * 64)
            if graph == block_at:
                f.flush()
                Path(marker).write_text(graph)
                time.sleep(3600)
            f.write(bytes(kb * 1024))
        print("built", graph, flush=True)

    try:
        engines = build_engines_checked(bundle, Platform("10.3.0", "Orin", (8, 7)),
                                        provider_chain("tensorrt", trt_provider="TensorrtExecutionProvider"),
                                        session=session, progress=False)
    except FusionEdgeError as e:            # as fusion_edge/cli.py main does
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("state", engines["state"], flush=True)
''')


@pytest.fixture(scope="module")
def trt16(tiny_checkpoint, tmp_path_factory):
    from fusion_edge.targets import export_bundle
    return export_bundle(str(tiny_checkpoint("phi3", "so400m")), tmp_path_factory.mktemp("trt") / "t16", "trt",
                         "fp16", verify=False, progress=False)


def _built(stdout: str) -> list[str]:
    return [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("built ")]


@pytest.mark.slow
def test_build_engines_killed_mid_graph_resumes_with_that_graph(trt16, tmp_path):
    from fusion_edge.runtime.trt.build import ordered_graphs
    bundle = tmp_path / "t16"
    shutil.copytree(trt16, bundle)
    graphs = ordered_graphs(Bundle.open(bundle))
    script = tmp_path / "build.py"
    script.write_text(BUILD)
    marker, log = tmp_path / "marker", tmp_path / "build0.log"
    proc = _start([sys.executable, script, bundle, graphs[3], marker, 64], log)
    _kill_when(proc, marker.is_file, f"the engine of {graphs[3]} was half written", log, timeout=300)
    b = Bundle.open(bundle)                           # still a bundle: its engines record says how far it got
    engines = b.manifest["engines"]
    assert engines["state"] == "partial" and sorted(engines["graphs"]) == sorted(graphs[:3])
    half = bundle / "engines" / graphs[3] / f"{graphs[3]}.engine"
    assert half.stat().st_size < 64 * 1024
    r = _run([sys.executable, script, bundle, "-", marker, 64])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _built(r.stdout) == graphs[3:] and "state built" in r.stdout
    engines = Bundle.open(bundle).manifest["engines"]
    assert engines["state"] == "built" and sorted(engines["graphs"]) == sorted(graphs)
    assert stamp.check_stamp(engines, ORIN, bundle, sha256_file) == []          # every engine file as recorded
    assert half.stat().st_size > 64 * 1024


@pytest.mark.slow
def test_build_engines_on_a_full_disk_keeps_what_it_built_and_resumes(trt16, tmp_path):
    from fusion_edge.runtime.trt.build import ordered_graphs
    graphs = ordered_graphs(Bundle.open(trt16))
    size = sum(f.stat().st_size for f in trt16.rglob("*") if f.is_file())
    script = tmp_path / "build.py"
    script.write_text(BUILD)
    with Tmpfs(tmp_path / "disk", size / (1 << 20) + 1.5) as fs:
        bundle = fs.where / "t16"
        assert _run(["cp", "-r", trt16, bundle], runner=fs).returncode == 0
        argv = [sys.executable, script, bundle, "-", tmp_path / "marker", 256]
        r = _run(argv, runner=fs)
        error, fix = _clean_failure(r)
        assert f"the disk filled up while writing the TensorRT engines {bundle / 'engines'}" in error
        assert f"`fusion-edge build-engines {bundle}` resumes with the next graph" in error
        assert "copy the bundle to a folder on a bigger disk" in fix
        seen = fs.inspect(bundle)
        assert seen["open_error"] is None                          # the manifest was never half written
        recorded = seen["engines"]
        assert 0 < len(recorded) < len(graphs) and sorted(graphs[:len(recorded)]) == recorded
        fs.resize(64)
        r = _run(argv, runner=fs)
        assert r.returncode == 0, r.stderr[-3000:]
        assert _built(r.stdout) == graphs[len(recorded):] and "state built" in r.stdout


def test_build_engines_into_a_read_only_bundle_builds_nothing(trt16, tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILD)
    size = sum(f.stat().st_size for f in trt16.rglob("*") if f.is_file())
    with Tmpfs(tmp_path / "disk", size / (1 << 20) + 2) as fs:
        bundle = fs.where / "t16"
        assert _run(["cp", "-r", trt16, bundle], runner=fs).returncode == 0
        fs.resize(size / (1 << 20) + 2, ro=True)
        r = _run([sys.executable, script, bundle, "-", tmp_path / "marker", 64], runner=fs)
        error, fix = _clean_failure(r)
        assert f"{bundle} is on a read-only file system: the TensorRT engines {bundle / 'engines'}" in error
        assert "copy the bundle to a folder on a writable disk" in fix and _built(r.stdout) == []


def test_a_killed_writers_partial_is_removed_only_when_its_writer_is_gone(tmp_path):
    """BundleWriter's cleanup: a `.partial-<pid>` whose process is dead, or alive but not holding
    the folder's lock (a reused pid), is removed; a live writer's is left alone."""
    from fusion_edge.runtime.bundle import BundleWriter
    out = tmp_path / "b"
    dead = tmp_path / f".b.partial-{_dead_pid()}"
    dead.mkdir()
    reused = tmp_path / f".b.partial-{os.getppid()}"      # a live process that is no writer
    reused.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import sys, time
        from fusion_edge.runtime.bundle import BundleWriter
        w = BundleWriter({str(out)!r})
        print(w.tmp, flush=True)
        sys.stdin.read()
    ''')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.is_dir()
        w = BundleWriter(out)
        assert not dead.exists() and not reused.exists() and live.is_dir()
        w.abort()
    finally:
        holder.stdin.close()
        holder.wait()
