"""Soak test of the fusion_edge ROS 2 node: N image+question pairs with disturbances, the
node's resident memory (RSS), and the fate of every question.

    python -m fusion_edge.bench.soak_ros2 BUNDLE -n 1000 [--sample 25] [--json OUT]

Starts `fusion-edge ros2 BUNDLE` in a private ROS domain (localhost discovery, a namespace
of its own) and plays a robot (soak_ros2_robot.py): a camera node publishes a fresh frame (sensor-data QoS, as
drivers do) before each question, and each question waits for its answer. Every --cycle
questions the run goes through:
  steady        a third of the cycle's pairs, one at a time
  camera-gone   the camera's node is destroyed; --gone questions are asked meanwhile (the
                node answers about the last frame it has); then a new camera node comes back
  client-cycle  the questioning node (question publisher, answer subscriptions) is destroyed
                and a new one takes its place
  steady        another third
  burst         --burst-frames frames at --burst-hz with a question after every --burst-every
                frames, not waiting: faster than the node answers, so one question runs, one
                waits and the others are refused on ~/status
  steady        the rest of the cycle's pairs
RSS is the node process's VmRSS (/proc/PID/status), read every --sample answers; growth is
from the --warmup'th answer (default: one --cycle, so that every disturbance has happened
once) to the end. The accounting (soak_ros2_ledger.py): every question
the node accepts ends exactly once and a done one is on ~/answer once; every question it
refuses is refused once; none goes unmentioned. Exit 1 when a question was lost, duplicated
or unseen, ~/answer missed or repeated one, or RSS grew by --max-growth-pct or more after
warm-up; each failure is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .serve_bench import provenance
from .soak_ros2_robot import Soak

STOP_S = 30.0


def private_env() -> dict:
    """A domain id of this process's own (not the tests' 1–100 nor ros2_latency's 150–229),
    localhost discovery, and the Fast DDS profile that lets raw 640x480 frames through."""
    from fusion_edge.apps.ros2.cli import FASTDDS_PROFILE
    return {"ROS_DOMAIN_ID": str(101 + os.getpid() % 49), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE)}


@contextlib.contextmanager
def environment(values: dict):
    """os.environ with `values` set (rclpy in this process reads it), restored afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- the node process, the run, the verdict ----------------------------------------------------
def start_node(args, ns: str, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fusion_edge.cli", "ros2", args.bundle, "--ros-args", "-r", f"__ns:={ns}",
           "-p", f"device:={args.device}", "-p", f"max_new_tokens:={args.max_new_tokens}"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def soak(args) -> dict:
    """Start the node, run the soak against it, stop it (SIGINT) → the report (no verdict)."""
    ns = f"/soak_{os.getpid()}"
    with environment(private_env()), tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "node.log"
        with open(log_path, "w") as log:
            proc = start_node(args, ns, log)
        try:
            report = Soak(args, f"{ns}/fusion_edge", proc).run()
        except BaseException:
            print(f"node log (last lines):\n{log_path.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                report_exit: int | str = proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                report_exit = "killed"
        report["node_exit"] = report_exit
        if report_exit != 0:
            report["node_log_tail"] = log_path.read_text()[-3000:]
    return report


def failures(report: dict, max_growth_pct: float) -> list[str]:
    c = report["ledger"]["counts"]
    out = [f"{c[k]} question(s) {k}" for k in ("lost", "duplicated", "unseen") if c[k]]
    out += [f"{c[k]} answer(s) {k.split('_')[-1]} on ~/answer" for k in ("answer_topic_missing",
                                                                         "answer_topic_extra") if c[k]]
    if report["rss"]["growth_pct"] >= max_growth_pct:
        out.append(f"RSS grew {report['rss']['growth_pct']:.1f} % after warm-up (limit {max_growth_pct:g} %)")
    if report["node_exit"] != 0:
        out.append(f"the node exited with {report['node_exit']} on SIGINT")
    return out


def print_summary(report: dict) -> None:
    c, r, lat = report["ledger"]["counts"], report["rss"], report["ledger"]["latency"]
    print(f"asked {c['asked']}: accepted {c['accepted']} (answered {c['answered']}, cancelled {c['cancelled']}, "
          f"error {c['errored']}), refused {c['refused']}; lost {c['lost']}, duplicated {c['duplicated']}, "
          f"unseen {c['unseen']}; ~/answer missing {c['answer_topic_missing']}, extra {c['answer_topic_extra']}")
    print(f"answers about the frame published before them: {c['about_expected_frame']}, "
          f"about another: {c['about_other_frame']}")
    print(f"RSS after {r['warmup_answers']} answers {r['after_warmup_mb']} MB, end {r['end_mb']} MB "
          f"({r['growth_pct']:+.2f} %), highest after warm-up {r['max_after_warmup_mb']} MB")
    for name, s in lat.items():
        if s:
            print(f"  {name:22s} n {s['n']:4d}  p50 {s['p50_ms']:8.1f} ms  p95 {s['p95_ms']:8.1f} ms  "
                  f"max {s['max_ms']:8.1f} ms")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("bundle")
    p.add_argument("-n", type=int, default=1000, help="questions in all (default 1000)")
    p.add_argument("--sample", type=int, default=25, help="read the node's RSS every this many answers")
    p.add_argument("--warmup", type=int, default=None,
                   help="answers after which RSS is the baseline for growth (default: --cycle, i.e. after the "
                        "node has met every disturbance once)")
    p.add_argument("--max-growth-pct", type=float, default=5.0, help="RSS growth after warm-up that fails the soak")
    p.add_argument("--cycle", type=int, default=250, help="questions per cycle of disturbances")
    p.add_argument("--gone", type=int, default=3, help="questions asked while the camera is gone, per cycle")
    p.add_argument("--burst-frames", type=int, default=200, help="frames per burst")
    p.add_argument("--burst-hz", type=float, default=100.0, help="frame rate aimed at in a burst")
    p.add_argument("--burst-every", type=int, default=10, help="a question after every this many burst frames")
    p.add_argument("--gap", type=float, default=0.2, help="seconds between a frame and its question")
    p.add_argument("--size", default="640x480", type=lambda s: tuple(int(v) for v in s.split("x")),
                   help="frame size WxH (rgb8)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one outcome")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    if min(args.n, args.sample, args.cycle, args.burst_frames, args.burst_every) < 1 or args.gone < 0:
        p.error("-n, --sample, --cycle, --burst-frames and --burst-every must be at least 1, --gone at least 0")
    if args.warmup is None:     # the first cycle's bursts and camera/client changes size the heap
        args.warmup = args.cycle
    if not 0 <= args.warmup < args.n:
        p.error(f"--warmup {args.warmup} must be at least 0 and below -n {args.n} (growth is measured after it)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    meta = provenance(argv, "fusion_edge.bench.soak_ros2")
    report = soak(args)
    meta.update(loadavg_after=os.getloadavg(), finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    report = {"meta": meta, **report}
    bad = failures(report, args.max_growth_pct)
    report["failures"] = bad
    print_summary(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    for f in bad:
        print(f"FAIL: {f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
