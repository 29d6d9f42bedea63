"""The robot side of the ROS 2 soak (soak_ros2.py): a camera node, a questioning node, the
steps of a run, and the node process's RSS.

A run is a list of steps (schedule()): pairs (a fresh frame, then a question, waiting for its
outcome and its ~/answer), camera-gone (the camera node destroyed, questions asked about the
last frame, a new camera node), client-cycle (the questioning node replaced) and burst
(frames faster than the node answers, questions among them, waited for at the end).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .soak_ros2_ledger import Asked, account

QUESTIONS = ["what is in the picture?", "is the path clear?", "what colour is the box?", "is anyone there?"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def frame_pool(size: tuple[int, int], k: int = 8) -> list:
    """k rgb8 Image messages of generated scenes; each publish stamps one anew."""
    import numpy as np
    from fusion_edge.apps.ros2.client import image_msg
    from PIL import Image, ImageDraw
    pool = []
    for s in range(k):
        rng = np.random.default_rng(s)
        img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            d.rectangle((x, y, x + size[0] // 3, y + size[1] // 3), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        pool.append(image_msg(img))
    return pool


class Camera:
    """A robot's camera: a node of its own (its own context, so its own DDS participant)
    publishing frames with sensor-data QoS. close() = the camera disappears; a new Camera =
    it comes back. Publishing needs no executor."""

    def __init__(self, node: str, frames: list, name: str):
        import rclpy
        from rclpy.context import Context
        from rclpy.qos import qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image as ImageMsg
        self.ctx = Context()
        rclpy.init(context=self.ctx, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.pub = self.node.create_publisher(ImageMsg, f"{node}/image", qos_profile_sensor_data)
        self.frames, self.sent = frames, 0
        self.last_stamp: float | None = None

    def wait_matched(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not self.pub.get_subscription_count():
            if time.monotonic() > end:
                raise TimeoutError("the node's ~/image subscription did not match the camera")
            time.sleep(0.02)

    def publish(self) -> float:
        """Publish the next frame stamped now; → its stamp (what the node reports as frame.time)."""
        msg = self.frames[self.sent % len(self.frames)]
        t = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
        self.pub.publish(msg)
        self.sent += 1
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.last_stamp = stamp
        return stamp

    def close(self) -> None:
        import rclpy
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def schedule(n: int, cycle: int, gone: int, burst: int) -> list[tuple[str, int]]:
    """→ [(step, questions)]: pairs / camera-gone / client-cycle (0) / burst; questions sum to n.
    A last cycle too short for its disturbances is plain pairs."""
    steps, left = [], n
    while left > 0:
        c = min(cycle, left)
        steady = c - gone - burst
        if steady < 3:
            steps.append(("pairs", c))
        else:       # steady pairs last: a reading right after a burst holds its frames in flight
            third = steady // 3
            steps += [("pairs", third), ("camera-gone", gone), ("client-cycle", 0), ("pairs", third),
                      ("burst", burst), ("pairs", steady - 2 * third)]
        left -= c
    return [s for s in steps if s[1] or s[0] == "client-cycle"]


class Soak:
    """One run against a started node: the steps of schedule(), RSS samples, the question log."""

    def __init__(self, args, node: str, proc):
        self.args, self.node, self.proc = args, node, proc
        self.frames = frame_pool(args.size)
        self.asked: list[Asked] = []
        self.old_logs: list = []                # logs of replaced clients
        self.answered = 0
        self.rss_warm: float | None = None
        self.samples: list[tuple[int, int, float]] = []     # (asked, answered, RSS MB)
        self.clients = self.cameras = self.frames_sent = 0
        self.client = self._new_client()
        self.camera = self._new_camera()
        self.burst_rates: list[float] = []

    # ---- the robot's nodes ---------------------------------------------------------------------
    def _new_client(self):
        from fusion_edge.apps.ros2.client import NodeClient
        self.clients += 1
        c = NodeClient(self.node, f"soak_client_{self.clients}")
        c.wait_ready(self.args.timeout)
        return c

    def _new_camera(self) -> Camera:
        self.cameras += 1
        cam = Camera(self.node, self.frames, f"soak_camera_{self.cameras}")
        cam.wait_matched(self.args.timeout)
        return cam

    # ---- steps ---------------------------------------------------------------------------------
    def run(self) -> dict:
        from PIL import Image
        first = Image.new("RGB", self.args.size, (90, 120, 60))
        self.client.prime(first, timeout=self.args.timeout)       # discovery settled, model warm
        self.client.wait_for("answer", since=0, timeout=self.args.timeout)
        i, t0 = 0, time.monotonic()
        for step, k in schedule(self.args.n, self.args.cycle, self.args.gone, self.args.burst_frames
                                // self.args.burst_every):
            self._alive()
            if step == "pairs":
                for _ in range(k):
                    i += 1
                    self.pair(i, "steady", self.camera.publish())
            elif step == "camera-gone":
                self._close_camera()
                last = self.camera.last_stamp
                for _ in range(k):
                    i += 1
                    self.pair(i, "camera-gone", last, fresh=False)
                self.camera = self._new_camera()
            elif step == "client-cycle":
                self.old_logs.append(self.client.log)
                self.client.close()
                self.client = self._new_client()
            else:
                i = self.burst(i, k)
        wall = time.monotonic() - t0
        self._sample(final=True)
        events = [e for log in self.old_logs + [self.client.log] for e in log]
        self.client.close()
        self._close_camera()
        return {"wall_s": round(wall, 1), "ledger": account(self.asked, events), "rss": self._rss_report(),
                "cameras": self.cameras, "clients": self.clients, "frames_sent": self.frames_sent,
                "burst_fps": [round(r, 1) for r in self.burst_rates]}

    def pair(self, i: int, phase: str, stamp: float | None, fresh: bool = True) -> None:
        """One question, after a fresh frame (`fresh`), waiting for its outcome and its ~/answer."""
        if fresh:
            time.sleep(self.args.gap)           # best-effort: the frame lands before the question
        text = f"q{i}: {QUESTIONS[i % len(QUESTIONS)]}"
        self.asked.append(Asked(i, text, phase, time.monotonic(), stamp))
        since = self.client.question(text)
        try:
            status = self.client.wait_final(text, since, self.args.timeout)
            job = status.get("job") or {}
            if job.get("state") == "done":
                self.answered += 1
                self.client.wait_for("answer", lambda a, t=job["text"]: a == t, since, self.args.timeout)
        except TimeoutError as e:
            print(f"  q{i}: {e}", file=sys.stderr, flush=True)
        self._sample()

    def burst(self, i: int, k: int) -> int:
        """Frames at --burst-hz, a question after every --burst-every, none waited for until the end."""
        since, start = self.client.mark(), time.monotonic()
        texts: list[str] = []
        for f in range(self.args.burst_frames):
            self.camera.publish()
            if f % self.args.burst_every == self.args.burst_every - 1 and len(texts) < k:
                i += 1
                texts.append(f"q{i}: {QUESTIONS[i % len(QUESTIONS)]}")
                self.asked.append(Asked(i, texts[-1], "burst", time.monotonic(), sequential=False))
                self.client.question(texts[-1])
            time.sleep(1.0 / self.args.burst_hz)
        self.burst_rates.append(self.args.burst_frames / (time.monotonic() - start))
        done = 0
        for text in texts:
            try:
                job = self.client.wait_final(text, since, self.args.timeout).get("job") or {}
                done += job.get("state") == "done"
            except TimeoutError as e:
                print(f"  {text}: {e}", file=sys.stderr, flush=True)
        end = time.monotonic() + self.args.timeout     # the last answers' ~/answer messages
        while len(self.client.messages("answer", since)) < done and time.monotonic() < end:
            time.sleep(0.05)
        self.answered += done
        self._sample()
        return i

    # ---- the node's memory ---------------------------------------------------------------------
    def _sample(self, final: bool = False) -> None:
        due = self.answered // self.args.sample > (self.samples[-1][1] // self.args.sample if self.samples else 0)
        if not (due or final or (self.rss_warm is None and self.answered >= self.args.warmup)):
            return
        rss = rss_mb(self.proc.pid)
        self.samples.append((len(self.asked), self.answered, round(rss, 1)))
        if self.rss_warm is None and self.answered >= self.args.warmup:
            self.rss_warm = rss
        print(f"  {len(self.asked):5d}/{self.args.n} asked  {self.answered:5d} answered  rss {rss:.1f} MB",
              file=sys.stderr, flush=True)

    def _rss_report(self) -> dict:
        end = self.samples[-1][2]
        warm = self.rss_warm or end
        after = [s[2] for s in self.samples if s[1] >= self.args.warmup]
        return {"warmup_answers": self.args.warmup, "after_warmup_mb": round(warm, 1), "end_mb": end,
                "max_after_warmup_mb": max(after, default=end), "growth_pct": round(100 * (end - warm) / warm, 2),
                "samples": self.samples, "sample_fields": ["asked", "answered", "rss_mb"]}

    def _close_camera(self) -> None:
        self.frames_sent += self.camera.sent
        self.camera.close()

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the node exited with {self.proc.returncode}")
