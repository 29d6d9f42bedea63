"""The `fusion_edge` node: images and questions in, streamed answers and status out.

Threads: the executor runs every callback (decode an image, check and queue a question,
parameter changes, the watch tick); none of them waits for the model. The camera app's
Worker owns the Pipeline in its own thread, runs one answer at a time with one more
waiting (a third is refused), and reports through `_on_event`, which publishes the
partial and final answers and the status. Only `~/ask` (std_srvs/Trigger) waits for its
answer, in a callback group of its own, so the other callbacks go on meanwhile.
"""
from __future__ import annotations

import json
import threading
import time

from fusion_edge.apps.camera_qa.capture import Frame
from fusion_edge.apps.camera_qa.jobs import Job, clean_question
from fusion_edge.apps.camera_qa.watch import Watch
from fusion_edge.apps.camera_qa.worker import Worker
from fusion_edge.runtime.errors import FusionEdgeError, ImageError, PromptError
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image as ImageMsg
from std_msgs.msg import String
from std_srvs.srv import Trigger

from . import params
from .images import image_from_compressed, image_from_raw

# sensor-data QoS with only the newest frame kept
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
TEXT_QOS = 10
WATCH_TICK_S = 0.1
ASK_TIMEOUT_S = 600.0
# what a status message says about a question (frame: seq and header stamp of the image used)
JOB_FIELDS = ("id", "kind", "question", "state", "text", "token_ids", "error", "fix", "stats", "frame")


class FusionEdgeNode(Node):
    def __init__(self, open_pipeline, **node_kw):
        """open_pipeline(bundle, devices) → Pipeline (devices: Pipeline.open's device keywords);
        node_kw go to rclpy's Node."""
        super().__init__("fusion_edge", **node_kw)
        self._declare()
        bundle = self._p("bundle")
        if not bundle:
            raise PromptError("no bundle was given.", "fusion-edge ros2 BUNDLE, or --ros-args -p bundle:=FOLDER")
        for name in params.PARAMS:                  # before the model loads: what needs no pipeline
            params.check(name, self._p(name), None)
        self.pipe = open_pipeline(bundle, self._device_kwargs())
        for name in params.PARAMS:
            params.check(name, self._p(name), self.pipe)
        self.watch = Watch(self._p("max_question_chars"))
        self._configure_watch({}, force=True)
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._seq = 0
        self._jobs: dict[str, Job] = {}             # id → job not yet ended
        self._waiters: dict[str, threading.Event] = {}   # id → event set when ~/ask's job ends
        self._last_error: dict | None = None
        self._timings: dict = {}
        self._device_map = device_map(self.pipe)
        self._open_topics()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.worker = Worker(self.pipe, self._on_event, float(self._p("temperature"))).start()
        self._timer = self.create_timer(WATCH_TICK_S, self._tick)
        self._status("ready")

    # ---- setup -------------------------------------------------------------------------------
    def _declare(self) -> None:
        for name, (default, desc) in params.PARAMS.items():
            try:
                self.declare_parameter(name, default, ParameterDescriptor(description=desc))
            except ParameterException as e:
                kind = {str: "text", int: "a whole number", float: "a decimal number like 1.0"}[type(default)]
                raise PromptError(f"parameter {name}: {e}", f"give {name} as {kind}") from None

    def _open_topics(self) -> None:
        self.create_subscription(ImageMsg, "~/image", self._on_image, IMAGE_QOS)
        self.create_subscription(CompressedImage, "~/image/compressed", self._on_compressed, IMAGE_QOS)
        self._question_sub = self.create_subscription(String, "~/question", self._on_question, TEXT_QOS)
        self._pub_answer = self.create_publisher(String, "~/answer", TEXT_QOS)
        self._pub_partial = self.create_publisher(String, "~/answer_partial", TEXT_QOS)
        self._pub_status = self.create_publisher(String, "~/status", TEXT_QOS)
        self.create_service(Trigger, "~/ask", self._on_ask, callback_group=MutuallyExclusiveCallbackGroup())

    def _p(self, name: str):
        return self.get_parameter(name).value

    # ---- inputs (executor thread) ------------------------------------------------------------
    def _on_image(self, msg) -> None:
        self._take_frame(msg.header, lambda: image_from_raw(msg.encoding, msg.width, msg.height, msg.step,
                                                            msg.data))

    def _on_compressed(self, msg) -> None:
        self._take_frame(msg.header, lambda: image_from_compressed(msg.format, msg.data))

    def _take_frame(self, header, decode) -> None:
        try:
            image = decode()
        except ImageError as e:
            return self._error("image", e)
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
        with self._lock:
            self._seq += 1
            self._frame = Frame(f"r{self._seq}", self._seq, image, stamp or self._now(), origin="ros")

    def _on_question(self, msg) -> None:
        try:
            self._submit(self._job("ask", msg.data))
        except FusionEdgeError as e:
            self._error("question", e, question=msg.data[:200])

    def _on_ask(self, request, response):
        """std_srvs/Trigger: answer `watch_question` about the newest frame; waits for the answer."""
        try:
            if not self._p("watch_question"):
                raise PromptError("~/ask asks the watch_question parameter, which is empty.",
                                  "ros2 param set /fusion_edge watch_question 'What do you see?'")
            job = self._job("ask", self._p("watch_question"))
        except FusionEdgeError as e:
            return self._refuse_ask(response, e)
        done = self._waiters[job.id] = threading.Event()
        try:
            self._submit(job)
        except FusionEdgeError as e:
            self._waiters.pop(job.id, None)
            return self._refuse_ask(response, e)
        done.wait(ASK_TIMEOUT_S)
        self._waiters.pop(job.id, None)
        response.success = job.state == "done"
        response.message = job.text if response.success else (job.error or f"the answer ended {job.state}")
        return response

    def _refuse_ask(self, response, err: FusionEdgeError):
        self._error("ask", err)
        response.success, response.message = False, _readable(err)
        return response

    def _tick(self) -> None:
        """Watch mode: ask the standing question about a new frame when due and the worker is idle."""
        with self._lock:
            frame = self._frame
        now = time.monotonic()
        if frame is None or not self.watch.due(now, frame, self.worker.idle) or self._stale(frame):
            return
        self.watch.started(now, frame)
        try:
            self._submit(self._job("watch", self.watch.question, frame))
        except FusionEdgeError as e:
            self._error("watch", e)

    # ---- jobs ----------------------------------------------------------------------------------
    def _job(self, kind: str, question: str, frame: Frame | None = None) -> Job:
        q = clean_question(question, self._p("max_question_chars"))
        frame = frame or self._fresh_frame()
        return Job(kind, q, frame, self._p("max_new_tokens"), temperature=float(self._p("temperature")),
                   query_len=self._p("query_len") or None)

    def _fresh_frame(self) -> Frame:
        with self._lock:
            frame = self._frame
        if frame is None:
            raise ImageError("no image has arrived yet.",
                             "publish to ~/image or ~/image/compressed (remap: -r ~/image:=/camera/image_raw)")
        age = self._stale(frame)
        if age:
            raise ImageError(f"the newest image is {age:.1f} s old; max_image_age_s is "
                             f"{self._p('max_image_age_s'):g}.", "check that the camera still publishes, "
                             "or raise max_image_age_s")
        return frame

    def _stale(self, frame: Frame) -> float:
        """The frame's age in seconds when it is older than max_image_age_s, else 0.0."""
        limit = self._p("max_image_age_s")
        age = self._now() - frame.time
        return age if limit > 0 and age > limit else 0.0

    def _submit(self, job: Job) -> None:
        self._jobs[job.id] = job
        try:
            self.worker.submit(job)
        except FusionEdgeError:
            self._jobs.pop(job.id, None)
            raise

    # ---- outputs (worker thread, or the executor thread while submitting) ----------------------
    def _on_event(self, event: dict) -> None:
        if event["type"] == "token":
            job = self._jobs.get(event["id"])
            if job is not None:
                self._pub_partial.publish(String(data=job.text))
            return
        pub = event["job"]
        if event["type"] == "end":
            self._jobs.pop(pub["id"], None)
            if pub["state"] == "done":
                # the worker thread calls this right after the answer's generator ended
                pub["token_ids"] = list(self.pipe.last_result.token_ids)
                self._timings = pub["stats"]
                self._pub_answer.publish(String(data=pub["text"]))
            elif pub["state"] == "error":
                self._last_error = {"where": pub["kind"], "problem": pub["error"], "fix": pub["fix"],
                                    "time": time.time()}
            waiter = self._waiters.get(pub["id"])
            if waiter is not None:
                waiter.set()
        self._status(pub["state"], job=pub, ending=event["type"] == "end")

    def _error(self, where: str, err: FusionEdgeError, **extra) -> None:
        self._last_error = {"where": where, "problem": err.problem, "fix": err.fix, "time": time.time(), **extra}
        self.get_logger().warning(f"{where}: {_readable(err)}")
        self._status("error")

    def _status(self, event: str, job: dict | None = None, ending: bool = False) -> None:
        snap = self.worker.snapshot()
        busy = snap["waiting"] is not None if ending else snap["running"] is not None
        body = {"event": event, "state": "answering" if busy else "idle", "queued": snap["waiting"] is not None,
                "device": self.pipe.device, "devices": self.pipe.devices, "tf32": self.pipe.tf32,
                "tf32_parts": self.pipe.tf32_parts,
                "device_map": self._device_map, "device_notice": self.pipe.device_notice,
                "backend": self.pipe.backend_name,
                "verification": self.pipe.bundle.verification_status,
                "last_error": self._last_error, "timings": self._timings, "watch": self.watch.on,
                "time": time.time()}
        if job is not None:
            body["job"] = {k: job[k] for k in JOB_FIELDS if k in job}
        self._pub_status.publish(String(data=json.dumps(body)))

    # ---- parameters ----------------------------------------------------------------------------
    def _on_set_parameters(self, changes) -> SetParametersResult:
        new = {p.name: p.value for p in changes}
        try:
            for name, value in new.items():
                if name in params.FIXED and value != self._p(name):
                    raise params.refuse_fixed(name)
                params.check(name, value, self.pipe)
            self._configure_watch(new)
        except FusionEdgeError as e:
            return SetParametersResult(successful=False, reason=_readable(e))
        if "max_question_chars" in new:
            self.watch.max_question_chars = new["max_question_chars"]
        return SetParametersResult(successful=True)

    def _configure_watch(self, new: dict, force: bool = False) -> None:
        """Apply watch_question / watch_period_s (the new ones, else the current ones); all or nothing."""
        if not force and not {"watch_question", "watch_period_s", "max_question_chars"} & set(new):
            return
        question = new.get("watch_question", self._p("watch_question"))
        period = new.get("watch_period_s", self._p("watch_period_s"))
        if question:
            question = clean_question(question, new.get("max_question_chars", self._p("max_question_chars")))
        self.watch.configure(bool(question) and period > 0, question or None, period if period > 0 else None)

    def _device_kwargs(self) -> dict:
        return {"device": self._p("device"), "tf32": bool(self._p("tf32")),
                **{f"{p}_device": (self._p(f"{p}_device") or None) for p in ("vision", "align", "llm")}}

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def shutdown(self) -> None:
        self.worker.stop()


def device_map(pipe) -> dict:
    """Which provider runs each part: onnxruntime's first provider per session, or llama.cpp."""
    def provider(session):
        return session.get_providers()[0] if hasattr(session, "get_providers") else None
    sessions = getattr(pipe.vision, "sessions", {})
    align = next((sessions[n] for n in sessions if n.startswith("align_")), None)
    llm = provider(getattr(pipe.llm, "embed_sess", None)) or f"llama.cpp ({pipe.devices['llm']})"
    return {"vision": provider(sessions.get("vision")) or pipe.devices["vision"],
            "align": provider(align) or pipe.devices["align"], "llm": llm}


def _readable(err: FusionEdgeError) -> str:
    return err.problem + (f" — fix: {err.fix}" if err.fix else "")
