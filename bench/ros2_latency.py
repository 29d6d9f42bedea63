"""Question-to-answer latency of the fusion_edge ROS 2 node, measured over ROS.

    python -m fusion_edge.bench.ros2_latency BUNDLE [--questions 30] [--max-new-tokens 16]

Starts `fusion-edge ros2 BUNDLE` in a private ROS domain, publishes a new 640x480 frame
before each question (so every answer pays for `look` too, as on a robot) and times, from
the moment the question is published: the first partial answer (~/answer_partial) and the
full answer (~/answer). The same questions go through `Pipeline.ask` in this process; the
difference, and per question the answer time less the worker's own time (`stats.total_s`),
is what ROS and the node add. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

QUESTIONS = ["What is in the picture?", "Is anyone there?", "What colour is the box?", "Is the path clear?",
             "How many objects are there?", "Describe the scene."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--questions", type=int, default=30)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from fusion_edge.apps.ros2.cli import FASTDDS_PROFILE
    os.environ.update({"ROS_DOMAIN_ID": str(150 + os.getpid() % 80), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                       "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE)})
    ns = f"/latency_{os.getpid()}"
    node = subprocess.Popen([sys.executable, "-m", "fusion_edge.cli", "ros2", args.bundle, "--ros-args",
                             "-r", f"__ns:={ns}", "-p", f"device:={args.device}",
                             "-p", f"max_new_tokens:={args.max_new_tokens}"], stderr=subprocess.DEVNULL)
    try:
        ros = measure_ros(f"{ns}/fusion_edge", args.questions)
    finally:
        node.send_signal(2)
        node.wait(30)
    direct = measure_direct(args.bundle, args.device, args.questions, args.max_new_tokens)
    report(ros, direct, args)
    return 0


def frame(i: int):
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(i)
    img = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(5):
        x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
        d.rectangle((x, y, x + 80, y + 80), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def measure_ros(node: str, n: int) -> dict:
    from fusion_edge.apps.ros2.client import NodeClient
    first, full, tokens, overhead = [], [], [], []
    with NodeClient(node, "latency_client") as c:
        c.wait_ready(120)
        c.prime(frame(10_000), timeout=120)
        for i in range(n):
            stamp = c.publish_image(frame(i))
            time.sleep(0.2)                           # the frame arrives before the question
            q = QUESTIONS[i % len(QUESTIONS)]
            t0 = time.monotonic()                     # the clock of the client's arrival times
            since = c.question(q)
            status = c.wait_final(q, since, 120)
            job = status["job"]
            assert job["state"] == "done" and abs(job["frame"]["time"] - stamp) < 1e-6, status
            t_answer, _ = c.wait_for("answer", lambda a, t=job["text"]: a == t, since, 30)
            partials = c.messages("answer_partial", since)
            first.append((partials[0][0] if partials else t_answer) - t0)
            full.append(t_answer - t0)
            tokens.append(job["stats"]["new_tokens"])
            overhead.append(full[-1] - job["stats"]["total_s"])   # all but the worker's look + ask
    return {"first_partial_s": first, "answer_s": full, "new_tokens": tokens, "overhead_s": overhead}


def measure_direct(bundle: str, device: str, n: int, max_new: int) -> dict:
    from fusion_edge.logs import printed
    from fusion_edge.runtime.pipeline import Pipeline
    with printed():                     # engine building while a trt bundle opens: on stderr
        pipe = Pipeline.open(bundle, device=device)
    pipe.ask(pipe.look(frame(10_000)), "Ready?", max_new_tokens=max_new)
    full = []
    for i in range(n):
        t0 = time.perf_counter()
        pipe.ask(pipe.look(frame(i)), QUESTIONS[i % len(QUESTIONS)], max_new_tokens=max_new)
        full.append(time.perf_counter() - t0)
    return {"answer_s": full}


def summary(xs) -> dict:
    a = np.asarray(xs) * 1000
    return {"median_ms": round(float(np.median(a)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1)}


def report(ros: dict, direct: dict, args) -> None:
    rows = {"ROS question → first partial answer": summary(ros["first_partial_s"]),
            "ROS question → full answer": summary(ros["answer_s"]),
            "  of which ROS + node (answer − worker)": summary(ros["overhead_s"]),
            "Pipeline.look + ask in process": summary(direct["answer_s"])}
    print(f"{args.questions} questions, new 640x480 frame each, up to {args.max_new_tokens} new tokens "
          f"(median {int(np.median(ros['new_tokens']))}), device {args.device}")
    for name, s in rows.items():
        print(f"  {name:40s} median {s['median_ms']:8.1f} ms   p95 {s['p95_ms']:8.1f} ms")
    print(json.dumps({"bundle": args.bundle, "questions": args.questions, "max_new_tokens": args.max_new_tokens,
                      **dict(zip(("first_partial", "answer", "ros_overhead", "direct"), rows.values()))}))


if __name__ == "__main__":
    sys.exit(main())
