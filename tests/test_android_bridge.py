"""The Android bridge on the host (apps/android_bridge, docs/android.md): the Java API over the
JNI library, built by CMake with -DFUSION_EDGE_JNI=ON (scripts/test.sh does), run with `java`
on the tiny gguf bundle. Its answer must carry the Python runtime's greedy token ids.

Without the build these tests skip, unless FUSION_NATIVE_BUILD names the build folder: then a
missing JNI build (no JDK, FUSION_EDGE_JNI off) fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="the gguf extra (gguf) is not installed")
pytest.importorskip("llama_cpp", reason="the gguf extra (llama-cpp-python) is not installed")


ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is on the table?"
STEPS = 12
SOAK_CYCLES = 100
SOAK_MAX_GROWTH_KIB = 32 * 1024


@pytest.fixture(scope="session")
def scene_png(work_dir) -> Path:
    from conftest import draw_scene
    p = work_dir / "android_scene.png"          # PNG: ImageIO and Pillow decode it to the same pixels
    draw_scene(640, 480, 1).save(p)
    return p


def _bridge_dir() -> Path:
    env = os.environ.get("FUSION_NATIVE_BUILD")
    d = (Path(env) if env else ROOT / "build") / "apps" / "android_bridge"
    if not (d / "fusion-edge-host-test.jar").is_file() or not (d / "libfusion_edge_jni.so").is_file():
        if env:
            pytest.fail(f"{d} has no JNI build: build with -DFUSION_EDGE_JNI=ON (needs a JDK: scripts/setup.sh)")
        pytest.skip("the Android bridge is not built (scripts/build_native.sh -DFUSION_EDGE_JNI=ON)")
    if not shutil.which("java"):
        pytest.fail("the JNI build exists but `java` is not on PATH")
    return d


def _run_host_test(bundle: Path, png: Path, *extra: str, jvm: tuple[str, ...] = ()) -> str:
    d = _bridge_dir()
    cmd = ["java", *jvm, "-Xcheck:jni", f"-Djava.library.path={d}",
           "-cp", f"{d / 'fusion-edge.jar'}:{d / 'fusion-edge-host-test.jar'}", "ai.fusionedge.FusionEdgeHostTest",
           str(bundle), "--image", str(png), "--question", QUESTION, "--steps", str(STEPS),
           *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    report = "\n".join(line for line in p.stdout.splitlines() if not line.startswith(("ok ", "ANSWER")))
    print(report)
    assert p.returncode == 0 and "\n0 failure(s)" in p.stdout, p.stdout + p.stderr[-3000:]
    jni_warnings = [line for line in (p.stdout + p.stderr).splitlines() if "WARNING in native method" in line]
    assert not jni_warnings, jni_warnings                          # -Xcheck:jni's complaints
    return p.stdout


def test_java_api_answers_with_the_python_runtimes_token_ids(gguf_bundle, scene_png):
    """Streaming, cancel within a token, FusionEdgeException for bad input, and parity with Python."""
    from fusion_edge.runtime.pipeline import Pipeline
    bundle = gguf_bundle("phi3", "so400m")
    out = _run_host_test(bundle, scene_png, "--cycles", "0")
    got_ids = [int(t) for t in re.search(r"^ANSWER_IDS(.*)$", out, re.M).group(1).split()]
    got_text = bytes.fromhex(re.search(r"^ANSWER_TEXT_HEX (\S*)$", out, re.M).group(1)).decode()
    pipe = Pipeline.open(bundle, device="cpu", threads=1)
    pipe.ask(pipe.look(scene_png), QUESTION, max_new_tokens=STEPS)
    want = pipe.last_result
    print(f"java: {got_ids}\npython: {list(want.token_ids)}")
    assert got_ids == [int(t) for t in want.token_ids]
    assert got_text == want.text
    for check in ("tokens stream to the listener", "cancel stops the running answer", "open: missing bundle",
                  "look: ARGB length != width*height", "look: zero width", "ask() returns at once"):
        assert re.search(rf"^ok +{re.escape(check)}", out, re.M), check


@pytest.mark.slow
@pytest.mark.xdist_group("memory")      # conftest.py: Ray clusters and memory soaks, one at a time
def test_java_api_survives_100_open_ask_close_cycles_without_growing(gguf_bundle, scene_png):
    """VmRSS of the JVM after 3 warm-up cycles, then after 100 open/look/ask/close cycles.

    The Java heap is fixed and pre-touched (64 MiB), so RSS changes are the native side's (and the
    JVM's non-heap). With the default heap, RSS rose by ~50 MB to a plateau reached near cycle 50;
    with the heap fixed it stays flat (+0.2 MB over 10 cycles), so that was the heap growing."""
    out = _run_host_test(gguf_bundle("phi3", "so400m"), scene_png, "--soak-only", "--cycles", str(SOAK_CYCLES),
                         "--max-growth-kib", str(SOAK_MAX_GROWTH_KIB),
                         jvm=("-Xms64m", "-Xmx64m", "-XX:+AlwaysPreTouch"))
    m = re.search(r"^RSS_KIB before=(\d+) after=(\d+) growth=(-?\d+) peak=(\d+) cycles=(\d+)", out, re.M)
    assert m and int(m.group(5)) == SOAK_CYCLES, out
    assert int(m.group(3)) <= SOAK_MAX_GROWTH_KIB
