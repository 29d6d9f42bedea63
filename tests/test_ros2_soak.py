"""The ROS 2 node's soak (bench/soak_ros2.py): its accounting on made-up message logs, and a
short real run against the node on the tiny bundle.

The short run goes through every disturbance of the full soak once: steady pairs, the camera
node destroyed and a new one, the questioning node replaced, a burst of frames faster than
the node answers with questions in it. It checks the node's contract (docs/ros2.md), not
memory: the 5 % RSS bound is the full soak's figure (docs/ros2.md, Soak), too noisy over 30
questions to assert here.
"""
from __future__ import annotations

import json

import pytest
from fusion_edge.bench.soak_ros2_ledger import Asked, account


# ---- the accounting, on logs written by hand ---------------------------------------------------------
def status(event, job=None, **extra):
    return json.dumps({"event": event, "job": job, **extra})


def job(jid, question, state, text="", frame_time=1.0):
    return {"id": jid, "kind": "ask", "question": question, "state": state, "text": text,
            "frame": {"time": frame_time}}


def refusal(question):
    return status("error", last_error={"where": "question", "question": question, "problem": "busy"})


def test_each_question_is_ok_refused_lost_duplicated_or_unseen():
    asked = [Asked(k, f"q{k}", "steady", float(k), stamp=1.0) for k in range(1, 6)]
    log = [("status", 1.1, status("running", job("j1", "q1", "running"))),
           ("answer_partial", 1.2, "a"),
           ("answer", 1.3, "a"), ("status", 1.3, status("done", job("j1", "q1", "done", "a"))),
           ("status", 2.1, refusal("q2")),
           ("status", 3.1, status("queued", job("j3", "q3", "queued"))),              # never ends
           ("status", 4.1, status("running", job("j4", "q4", "running"))),
           ("answer", 4.2, "b"), ("status", 4.2, status("done", job("j4", "q4", "done", "b"))),
           ("answer", 4.3, "b"), ("status", 4.3, status("done", job("j4", "q4", "done", "b")))]   # twice
    led = account(asked, log)
    verdicts = {t: q["verdict"] for t, q in led["questions"].items()}
    assert verdicts == {"q1": "ok", "q2": "refused", "q3": "lost", "q4": "duplicated", "q5": "unseen"}
    c = led["counts"]
    assert (c["asked"], c["accepted"], c["refused"], c["lost"], c["duplicated"], c["unseen"]) == (5, 3, 1, 1, 1, 1)
    assert (c["answer_topic_missing"], c["answer_topic_extra"]) == (0, 1)     # q4's second "b"
    assert led["latency"]["first_partial_s"]["p50_ms"] == pytest.approx(200.0)
    assert led["latency"]["answer_s"]["n"] == 2                             # q1 and q4 (its first end)


def test_an_answer_missing_or_repeated_on_the_answer_topic_is_counted():
    asked = [Asked(1, "q1", "steady", 1.0), Asked(2, "q2", "steady", 2.0)]
    log = [("status", 1.1, status("done", job("j1", "q1", "done", "a"))),             # no ~/answer "a"
           ("status", 2.1, status("done", job("j2", "q2", "done", "b"))), ("answer", 2.1, "b"), ("answer", 2.2, "b")]
    c = account(asked, log)["counts"]
    assert (c["answered"], c["answer_topic_missing"], c["answer_topic_extra"]) == (2, 1, 1)


def test_the_schedule_spreads_every_disturbance_over_the_run():
    from fusion_edge.bench.soak_ros2_robot import schedule
    steps = schedule(1000, 250, 3, 20)
    assert sum(k for _, k in steps) == 1000
    assert [s for s, _ in steps].count("burst") == 4 and [s for s, _ in steps].count("client-cycle") == 4
    assert sum(k for s, k in steps if s == "camera-gone") == 12
    assert steps[-1][0] == "pairs"                              # RSS is last read after steady pairs
    assert schedule(7, 250, 3, 20) == [("pairs", 7)]          # too short for disturbances


# ---- what the soak found ----------------------------------------------------------------------------
def test_rss_growth_is_measured_after_the_first_cycle_unless_told():
    from fusion_edge.bench.soak_ros2 import parse_args
    assert parse_args(["b"]).warmup == 250                           # --cycle's default
    assert parse_args(["b", "--cycle", "100", "-n", "400"]).warmup == 100
    assert parse_args(["b", "--warmup", "5", "-n", "30"]).warmup == 5
    with pytest.raises(SystemExit):                                   # nothing left to measure after it
        parse_args(["b", "-n", "100"])


def test_the_node_bounds_malloc_arenas_before_ros_and_the_model_start(monkeypatch):
    """Without two arenas the node's RSS rose and fell by 10–30 MB and grew 5.8 % over the
    1000-pair soak (bench/soak_ros2.py). The setting binds only arenas made after it, so it must
    come before rclpy.init (DDS threads) and the model (onnxruntime's threads)."""
    pytest.importorskip("rclpy", reason="the ros2 extra (rclpy wheels) is not installed")
    from fusion_edge.apps.ros2 import spin

    class Stop(Exception):
        pass

    calls = []

    def init(**kw):
        calls.append("rclpy.init")
        raise Stop
    monkeypatch.setattr(spin, "bound_arenas", lambda: calls.append("bound_arenas") or True)
    monkeypatch.setattr(spin.rclpy, "init", init)
    monkeypatch.setattr(spin, "FusionEdgeNode", lambda *a, **k: calls.append("model"))
    with pytest.raises(Stop):
        spin.run_node("bundle", [])
    assert calls == ["bound_arenas", "rclpy.init"]


def test_glibc_takes_the_arena_bound():
    import platform
    import subprocess
    import sys
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = "from fusion_edge.apps.ros2.malloc import bound_arenas; print(bound_arenas())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)   # not this process
    assert out.stdout.strip() == "True", out.stderr


# ---- the real thing, short -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("memory")      # conftest.py: Ray clusters and memory soaks, one at a time
def test_a_short_soak_loses_and_repeats_no_answer(bundle):
    pytest.importorskip("rclpy", reason="the ros2 extra (rclpy wheels) is not installed")
    from fusion_edge.bench.soak_ros2 import parse_args, soak
    args = parse_args([str(bundle), "-n", "30", "--cycle", "30", "--gone", "2", "--burst-frames", "40",
                       "--burst-every", "5", "--sample", "5", "--warmup", "5", "--size", "320x240",
                       "--max-new-tokens", "4", "--timeout", "60"])
    report = soak(args)
    c, qs = report["ledger"]["counts"], list(report["ledger"]["questions"].values())
    # on failure: the counts, every question that did not simply end done, the node's exit
    why = {"counts": c, "node_exit": report["node_exit"], "log": report.get("node_log_tail"),
           "not_plain": [q for q in qs if q["verdict"] != "ok" or q["state"] != "done" or q["frame"] == "other"]}
    assert (c["lost"], c["duplicated"], c["unseen"]) == (0, 0, 0), why
    assert (c["answer_topic_missing"], c["answer_topic_extra"]) == (0, 0), why
    assert c["asked"] == 30 == c["accepted"] + c["refused"], why
    assert c["accepted"] == c["answered"] + c["cancelled"] + c["errored"] and c["answered"] >= 22, why
    assert c["refused"] >= 1, ("the burst did not outrun the node", why)
    assert (report["cameras"], report["clients"], report["node_exit"]) == (2, 2, 0), why
    gone = [q for q in qs if q["phase"] == "camera-gone"]     # answered about the camera's last frame
    assert len(gone) == 2 and all(q["state"] == "done" and q["frame"] == "expected" for q in gone), why
    assert report["ledger"]["latency"]["answer_s"]["n"] >= 20, why
    assert len(report["rss"]["samples"]) >= 4 and report["rss"]["end_mb"] > 0, report["rss"]
