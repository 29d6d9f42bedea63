"""A small rclpy client of the fusion_edge node: publish images and questions, read answers.

The tests and the latency bench use it; it also shows how to talk to the node from Python.
It spins its own context in a background thread and records every answer, partial answer
and status message with its arrival time, so callers wait for what they expect.

    with NodeClient("/fusion_edge") as c:
        c.wait_ready()
        c.publish_image(pil_image)
        done = c.ask("What is on the table?")      # the final status of that question
        print(done["job"]["text"])
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import rclpy
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.client import Client
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image as ImageMsg
from std_msgs.msg import String
from std_srvs.srv import Trigger

OUTPUTS = ("answer", "answer_partial", "status")
FINAL = ("done", "error", "cancelled")


def image_msg(image, encoding: str = "rgb8", stamp: float | None = None, pad: int = 0) -> ImageMsg:
    """PIL RGB image → sensor_msgs/Image in `encoding`, rows padded by `pad` bytes."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1],
              "rgba8": np.asarray(image.convert("RGBA"), dtype=np.uint8),
              "bgra8": np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., [2, 1, 0, 3]],
              "mono8": np.asarray(image.convert("L"), dtype=np.uint8)[..., None]}[encoding]
    h, w, c = pixels.shape
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, :w * c] = pixels.reshape(h, w * c)
    msg = ImageMsg(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())
    _stamp(msg, stamp)
    return msg


def _stamp(msg, stamp: float | None) -> float:
    t = time.time() if stamp is None else stamp
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
    msg.header.frame_id = "camera"
    return t


class NodeClient:
    def __init__(self, node: str = "/fusion_edge", name: str = "fusion_edge_client"):
        self.target = node.rstrip("/")
        self.ctx = Context()
        rclpy.init(context=self.ctx, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.ctx)
        self._cond = threading.Condition()
        self.log: list[tuple[str, float, str]] = []      # (output, monotonic arrival, data)
        n = self.node
        self.image_pub = n.create_publisher(ImageMsg, f"{self.target}/image", 10)
        self.compressed_pub = n.create_publisher(CompressedImage, f"{self.target}/image/compressed", 10)
        self.question_pub = n.create_publisher(String, f"{self.target}/question", 10)
        self._subs = [n.create_subscription(String, f"{self.target}/{out}",
                                            lambda m, out=out: self._record(out, m.data), 100) for out in OUTPUTS]
        # rclpy's create_client cannot infer the request / response types from the service class
        self.set_client: Client[SetParameters.Request, SetParameters.Response] = \
            n.create_client(SetParameters, f"{self.target}/set_parameters")
        self.get_client: Client[GetParameters.Request, GetParameters.Response] = \
            n.create_client(GetParameters, f"{self.target}/get_parameters")
        self.ask_client: Client[Trigger.Request, Trigger.Response] = n.create_client(Trigger, f"{self.target}/ask")
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.ctx.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 — the context was shut down under us
                return

    def _record(self, out: str, data: str) -> None:
        with self._cond:
            self.log.append((out, time.monotonic(), data))
            self._cond.notify_all()

    # ---- waiting ---------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the node's topics and parameter services are matched with ours."""
        def ready():
            return (self.question_pub.get_subscription_count() and self.image_pub.get_subscription_count()
                    and all(s.get_publisher_count() for s in self._subs) and self.set_client.service_is_ready())
        self._until(ready, timeout, "the fusion_edge node to come up")

    def prime(self, image, question: str = "Ready?", timeout: float = 60.0) -> dict:
        """Publish `image` until the node answers a question about it (→ that final status).

        The first best-effort samples after discovery can be dropped while the node's
        side of the match completes; this waits that out.
        """
        end = time.monotonic() + timeout
        while True:
            self.publish_image(image)
            time.sleep(0.2)
            status = self.ask(question, max(end - time.monotonic(), 1.0))
            if (status.get("job") or {}).get("state") == "done" or time.monotonic() > end:
                return status

    def mark(self) -> int:
        with self._cond:
            return len(self.log)

    def wait_for(self, out: str, pred=lambda data: True, since: int = 0, timeout: float = 60.0):
        """The first (arrival time, data) on `out` after log index `since` for which pred(data) holds."""
        def find():
            for o, t, d in self.log[since:]:
                if o == out and pred(json.loads(d) if out == "status" else d):
                    return t, (json.loads(d) if out == "status" else d)
            return None
        with self._cond:
            end = time.monotonic() + timeout
            while (hit := find()) is None:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"nothing matching on {out} within {timeout:g} s; got "
                                       f"{[d for o, _, d in self.log[since:] if o == out][-5:]}")
                self._cond.wait(left)
            return hit

    def messages(self, out: str, since: int = 0) -> list[tuple[float, str]]:
        with self._cond:
            return [(t, d) for o, t, d in self.log[since:] if o == out]

    def _until(self, pred, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.02)

    # ---- inputs ----------------------------------------------------------------------------------
    def publish_image(self, image, encoding: str = "rgb8", stamp: float | None = None) -> float:
        msg = image_msg(image, encoding, stamp)
        self.image_pub.publish(msg)
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    def publish_raw(self, msg: ImageMsg) -> None:
        self.image_pub.publish(msg)

    def publish_compressed(self, data: bytes, fmt: str, stamp: float | None = None) -> float:
        msg = CompressedImage(format=fmt, data=data)
        t = _stamp(msg, stamp)
        self.compressed_pub.publish(msg)
        return t

    def question(self, text: str) -> int:
        """Publish a question; → the log index to wait from."""
        since = self.mark()
        self.question_pub.publish(String(data=text))
        return since

    def ask(self, text: str, timeout: float = 60.0) -> dict:
        """Publish a question and wait for its final status (done, or an error / refusal about it)."""
        since = self.question(text)
        return self.wait_final(text, since, timeout)

    def wait_final(self, text: str, since: int, timeout: float = 60.0, kind: str = "ask") -> dict:
        def about(s):
            job = s.get("job") or {}
            if job.get("question") == text and job.get("kind") == kind and job.get("state") in FINAL:
                return True
            err = s.get("last_error") or {}
            return s["event"] == "error" and err.get("question") == text
        return self.wait_for("status", about, since, timeout)[1]

    # ---- services --------------------------------------------------------------------------------
    def set_params(self, timeout: float = 10.0, **values) -> list:
        """→ rcl_interfaces SetParametersResult per value, in order."""
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self._call(self.set_client, req, timeout).results

    def get_params(self, *names: str, timeout: float = 10.0) -> dict:
        res = self._call(self.get_client, GetParameters.Request(names=list(names)), timeout)
        return {n: parameter_value_to_python(v) for n, v in zip(names, res.values)}

    def call_ask(self, timeout: float = 60.0):
        return self._call(self.ask_client, Trigger.Request(), timeout)

    def _call(self, client, request, timeout: float):
        self._until(client.service_is_ready, timeout, f"service {client.srv_name}")
        fut = client.call_async(request)
        self._until(fut.done, timeout, f"a reply from {client.srv_name}")
        return fut.result()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        self._thread.join(2)

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
