"""Session-scoped tiny checkpoints, bundles, references and images, built once per run.

Factories cache by arguments, so a test asks for what it needs (`tiny_checkpoint("llama3",
"siglip2")`, `onnx_bundle("phi3", "so400m", precision="fp16")`) and pays for it once.
Nothing here downloads: checkpoints are made with the project's tiny-checkpoint maker.

Once per run, not once per pytest-xdist worker: what a fixture writes to disk is built by the
first worker that needs it into the run's shared folder (`shared_build`: under a file lock, in
a temporary folder renamed into place when complete) and reused by the others. Each worker
keeps its own `work_dir` for what tests write themselves.

scripts/test.sh runs pytest-xdist with `--dist loadgroup`; tests marked
`pytest.mark.xdist_group(NAME)` run on one worker, one after another:
  * NAME = the module's name: modules whose module-scoped fixtures export a bundle or start a
    process (server, ROS 2 node, browser, venv): a second worker would build them again, or
    run a second copy beside the first.
  * "memory": the tests that start a local Ray cluster (a second cluster at once does not fit
    2 cores, and the Ray tests check that the Ray processes they saw start are gone) and the
    tests that measure a process's memory over a soak (the Android bridge's 100 cycles, the
    ROS 2 node's short soak, the heap trim): never beside each other or a Ray cluster.
Processes the tests start listen on port 0 (a free ephemeral port, read back); ROS 2 tests take
their domain id from `ros_domain_id` (one per worker and slot).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")      # tests never reach a hub
os.environ.setdefault("OMP_NUM_THREADS", "2")

CASES = [("phi3", "so400m"), ("llama3", "siglip2")]


# ---- sharing between pytest-xdist workers ------------------------------------------------------
def worker_index() -> int:
    """This pytest-xdist worker's number (gw0 → 0, gw1 → 1, …); 0 in a run without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)


def worker_count() -> int:
    """How many pytest-xdist workers this run has (1 without xdist)."""
    return max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


# ROS 2 domain ids the tests use: 1–100 (bench/soak_ros2.py takes 101–149, bench/ros2_latency.py
# 150–229). Each user of an id (a test module, a test) has a slot of its own.
ROS_DOMAIN_SLOTS = {"test_ros2": 0, "test_corpus_options": 1}
_ROS_DOMAIN_FIRST, _ROS_DOMAINS = 1, 100


def ros_domain_id(slot: str) -> int:
    """A ROS 2 domain id that no other worker of this run and no other slot of this worker uses.

    The run picks a block of `workers × slots` consecutive ids (from xdist's run id, shared by its
    workers, or this process's id without xdist: another run on the machine most likely picks
    another block); inside the block, worker w's slot s is id w·slots + s."""
    slots = len(ROS_DOMAIN_SLOTS)
    block = worker_count() * slots
    if block > _ROS_DOMAINS:
        raise RuntimeError(f"{worker_count()} workers × {slots} ROS 2 slots exceed the {_ROS_DOMAINS} domain ids")
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    seed = int(run, 16) if run else os.getpid()
    start = (seed % (_ROS_DOMAINS // block)) * block
    return _ROS_DOMAIN_FIRST + start + worker_index() * slots + ROS_DOMAIN_SLOTS[slot]


def shared_root(config: pytest.Config, tmp_path_factory) -> Path:
    """The folder this run's workers share: under xdist each worker's base temp is
    `<run's base temp>/gwN`, so the parent is common; without xdist, the base temp. A worker is
    told by its config (`workerinput`), not by PYTEST_XDIST_WORKER, which a pytest that a test
    starts inherits."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if hasattr(config, "workerinput") else base) / "shared"
    root.mkdir(parents=True, exist_ok=True)
    return root


def shared_build(root: Path, name: str, build: Callable[[Path], object]) -> Path:
    """`root/name`, built once per run by whichever worker asks first: `build(tmp)` writes the
    folder `tmp` (not yet existing; its parent does), which is renamed to `root/name` when
    `build` returns, so no worker ever sees a half-built folder. Under `root/name.lock`: the
    other workers wait for the build, then reuse it. A build that raises leaves nothing behind
    (the next caller tries again, as a failed fixture does without xdist).

    Resolve what `build` depends on (another shared folder) before calling: the locks are then
    never nested."""
    final = root / name
    if final.exists():
        return final
    with FileLock(str(root / f"{name}.lock")):
        if final.exists():
            return final
        tmp = root / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp / "out")
            os.rename(tmp / "out", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collected():
    logger = logging.getLogger("fusion_edge")
    handler, level = _Messages(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="session")
def log_lines():
    """`with log_lines() as lines:` → the messages of the `fusion_edge` log records (INFO and
    above) emitted in the block: what caplog.messages gives a test, for fixtures wider than one
    test (caplog is function-scoped)."""
    return _collected


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    """This worker's own folder for the session (tests write here; not shared with other workers)."""
    return tmp_path_factory.mktemp("fusion_edge")


@pytest.fixture(scope="session")
def shared_dir(request, tmp_path_factory) -> Path:
    """The run's folder shared by all xdist workers: fill it with `shared_build`."""
    return shared_root(request.config, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_checkpoint(shared_dir):
    """tiny_checkpoint(llm="phi3", tower="so400m", **kw) → checkpoint folder (cached, built once per run)."""
    from fusion_edge.export.tiny import make_tiny_checkpoint
    cache: dict = {}

    def make(llm: str = "phi3", tower: str = "so400m", **kw) -> Path:
        key = (llm, tower, tuple(sorted(kw.items())))
        if key not in cache:
            name = "-".join([llm, tower] + [f"{k}{v}" for k, v in sorted(kw.items())]).replace(",", "_")
            cache[key] = shared_build(shared_dir, f"ckpt-{name}",
                                      lambda out: make_tiny_checkpoint(out, llm=llm, tower=tower, **kw))
        return cache[key]
    return make


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    """reference(llm, tower, **kw) → FusionReference (cached)."""
    from fusion_edge.export.reference import FusionReference
    cache: dict = {}

    def get(llm: str = "phi3", tower: str = "so400m", **kw):
        key = (llm, tower, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = FusionReference.load(str(tiny_checkpoint(llm, tower, **kw)))
        return cache[key]
    return get


@pytest.fixture(scope="session")
def onnx_bundle(tiny_checkpoint, shared_dir):
    """onnx_bundle(llm, tower, precision="fp32", query_len=None, image_tokens=None) → bundle folder."""
    from fusion_edge.export.bundle_export import export_bundle
    cache: dict = {}

    def make(llm: str = "phi3", tower: str = "so400m", precision: str = "fp32",
             query_len: int | None = None, image_tokens: int | None = None) -> Path:
        key = (llm, tower, precision, query_len, image_tokens)
        if key not in cache:
            ckpt = str(tiny_checkpoint(llm, tower))
            cache[key] = shared_build(shared_dir, "bundle-" + "-".join(map(str, key)),
                                      lambda out: export_bundle(ckpt, out, "onnx", precision, query_len, image_tokens,
                                                                verify=False, progress=False))
        return cache[key]
    return make


@pytest.fixture(scope="session")
def verified_fp32(onnx_bundle, tiny_checkpoint, shared_dir) -> Path:
    """The phi3/so400m fp32 bundle, verified (`fusion-edge verify`): what quantization needs."""
    import io

    from fusion_edge.cli import main
    src, ckpt = onnx_bundle("phi3", "so400m"), str(tiny_checkpoint("phi3", "so400m"))

    def build(out: Path) -> None:
        shutil.copytree(src, out)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["verify", str(out), "--model", ckpt, "--steps", "4"]) == 0
    return shared_build(shared_dir, "bundle-phi3-so400m-fp32-verified", build)


@pytest.fixture(scope="session")
def recording(verified_fp32, shared_dir):
    """A small calibration recording of `verified_fp32`, recorded once per run for the quantized
    exports (test_quantize, test_vision_int8): one scene, two questions (both vision modes), and
    one built-in eval pair held out for the gate. test_calibration records its own."""
    from fusion_edge.calibration.builtin import builtin_pairs
    from fusion_edge.calibration.dataset import CalibItem
    from fusion_edge.calibration.record import Recordings, record_calibration
    from fusion_edge.runtime.pipeline import Pipeline

    def build(out: Path) -> None:
        (key, img, _), = builtin_pairs("calib", 1)
        items = [CalibItem(key, img, "What is on the table?"), CalibItem(key, img, "Is the door open?")]
        held = [CalibItem(k, i, q) for k, i, q in builtin_pairs("eval", 1)]
        pipe = Pipeline.open(verified_fp32, device="cpu")
        record_calibration(pipe, items, out, samples=2, held_out=held,
                           source={"fingerprint": pipe.bundle.manifest["source"]["fingerprint"]}, progress=False)
    return Recordings.open(shared_build(shared_dir, "q8-calib", build))


@pytest.fixture(scope="session")
def bundle(onnx_bundle) -> Path:
    """The phi3/so400m fp32 ONNX bundle (unverified): the cheapest bundle, shared by most test files.
    Shared by the whole session: a test that changes a bundle works on a copy."""
    return onnx_bundle("phi3", "so400m")


@pytest.fixture(scope="module")
def pipe(bundle):
    """A CPU Pipeline on `bundle`, one per module: tests set its recorder and read its last result."""
    from fusion_edge.runtime.pipeline import Pipeline
    return Pipeline.open(bundle, device="cpu")


@pytest.fixture(scope="session")
def gguf_bundle(tiny_checkpoint, shared_dir):
    """gguf_bundle(llm, tower, precision="fp32", **extra) → gguf bundle folder with vision.gguf
    (exported once per run, not verified; shared by the gguf, native, graph-gate, corpus and
    export-gate tests). Skips where the gguf extra is missing."""
    pytest.importorskip("gguf", reason="the gguf extra (gguf) is not installed")
    pytest.importorskip("llama_cpp", reason="the gguf extra (llama-cpp-python) is not installed")
    from fusion_edge.export.gguf_bundle import export_gguf_bundle
    cache: dict = {}

    def tag(k: str, v) -> str:          # a path value (onnx_from=...) is named by a digest
        v = str(v)
        return f"{k}{hashlib.sha1(v.encode()).hexdigest()[:10] if os.sep in v else v}"

    def make(llm: str = "phi3", tower: str = "so400m", precision: str = "fp32", **extra) -> Path:
        key = (llm, tower, precision, tuple(sorted(extra.items())))
        if key not in cache:
            ckpt = str(tiny_checkpoint(llm, tower))
            name = "-".join(["gguf", llm, tower, precision, *(tag(k, v) for k, v in sorted(extra.items()))])
            cache[key] = shared_build(shared_dir, name,
                                      lambda out: export_gguf_bundle(ckpt, out, "gguf", precision, verify=False,
                                                                     progress=False, **extra))
        return cache[key]
    return make


def wait_for(pred, timeout: float = 30.0, step: float = 0.02) -> bool:
    """Poll `pred` every `step` seconds until it is true (→ True) or `timeout` seconds pass (→ False).

    30 s by default (was 10): what the tests wait for takes well under a second alone, but the
    suite runs on every core (pytest-xdist), so a worker may get half a core while the other
    exports; a wait ends as soon as `pred` holds, so only a failing test waits longer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


def draw_scene(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
        x1, y1 = int(rng.integers(x0 + 1, w)), int(rng.integers(y0 + 1, h))
        d.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


@pytest.fixture(scope="session")
def images(shared_dir) -> dict[str, Path]:
    """Generated test images on disk: odd sizes, modes and formats (written once per run; tests
    only read them)."""
    folder = shared_build(shared_dir, "images", _write_images)
    return {name: folder / file for name, file in IMAGE_FILES.items()}


IMAGE_FILES = {"wide": "wide.jpg", "tall": "tall.jpg", "strip": "strip.jpg", "rgba": "rgba.png", "gray": "gray.png",
               "palette": "palette.gif", "empty": "empty.jpg", "corrupt": "corrupt.jpg", "notimage": "notimage.png"}


def _write_images(folder: Path) -> None:
    folder.mkdir()
    out = {}
    for name, (w, h), seed in (("wide", (640, 480), 1), ("tall", (300, 500), 2), ("strip", (1024, 256), 3)):
        p = folder / f"{name}.jpg"
        draw_scene(w, h, seed).save(p, quality=92)
        out[name] = p
    p = folder / "rgba.png"
    draw_scene(200, 150, 4).convert("RGBA").save(p)
    out["rgba"] = p
    p = folder / "gray.png"
    draw_scene(120, 90, 5).convert("L").save(p)
    out["gray"] = p
    p = folder / "palette.gif"
    draw_scene(160, 120, 6).convert("P").save(p)
    out["palette"] = p
    p = folder / "empty.jpg"
    p.write_bytes(b"")
    out["empty"] = p
    p = folder / "corrupt.jpg"
    good = (folder / "wide.jpg").read_bytes()
    p.write_bytes(good[: len(good) // 3])
    out["corrupt"] = p
    p = folder / "notimage.png"
    p.write_bytes(b"this is not an image at all" * 10)
    out["notimage"] = p
    assert {k: p.name for k, p in out.items()} == IMAGE_FILES


@pytest.fixture(scope="session")
def decode_parity():
    """decode_parity(bundle, tmp) → (max |Δlogit| decode graph vs segments over 12 greedy steps,
    tokens of each, decode-graph component): both decode the same random prompt."""
    import json as _json
    import shutil as _shutil

    from fusion_edge.runtime.backends.onnx_llm import OnnxLLM
    from fusion_edge.runtime.bundle import MANIFEST, Bundle

    def run(path: Path, tmp: Path):
        bundle = Bundle.open(path)
        merged = OnnxLLM(bundle, "cpu")
        old = tmp / "segments-only"
        _shutil.copytree(path, old)
        m = _json.loads((old / MANIFEST).read_text())
        comp = m["components"].pop("decode")
        (old / MANIFEST).write_text(_json.dumps(m))
        segments = OnnxLLM(Bundle.open(old, check_hashes=False), "cpu")
        assert merged.decode_sess is not None and segments.decode_sess is None
        x = np.random.default_rng(3).standard_normal((9, bundle.config.llm.hidden_size)).astype(np.float32)
        diff, toks = 0.0, ([], [])
        for engine, out in ((merged, toks[0]), (segments, toks[1])):
            engine.reserve(32)
            out.append(int(np.argmax(engine.prefill(x))))
        merged.segments = []           # the decode graph alone
        for _ in range(12):
            a, b = merged.decode(toks[0][-1]), segments.decode(toks[1][-1])
            diff = max(diff, float(np.abs(a - b).max()))
            toks[0].append(int(np.argmax(a)))
            toks[1].append(int(np.argmax(b)))
        return diff, toks, comp
    return run
