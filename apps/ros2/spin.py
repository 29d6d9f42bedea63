"""Start rclpy, run the node until SIGINT / SIGTERM, and shut everything down cleanly."""
from __future__ import annotations

import sys

import rclpy
from fusion_edge.runtime.errors import PromptError
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.parameter import Parameter

from .malloc import bound_arenas
from .node import FusionEdgeNode

# the default group (every topic, timer and parameter callback) + the blocking ~/ask service
EXECUTOR_THREADS = 2


def open_pipeline(bundle: str, devices: dict):
    """devices: Pipeline.open's device keywords (device, vision_device, align_device, llm_device, tf32)."""
    from fusion_edge.runtime.pipeline import Pipeline
    print(f"loading {bundle} …", file=sys.stderr, flush=True)
    pipe = Pipeline.open(bundle, **devices)
    if pipe.verification_warning:
        print(f"warning: {pipe.verification_warning}", file=sys.stderr, flush=True)
    return pipe


def run_node(bundle: str | None, ros_args: list[str]) -> int:
    if ros_args and ros_args[0] != "--ros-args":
        raise PromptError(f"unexpected argument '{ros_args[0]}'.",
                          "put ROS arguments after --ros-args: fusion-edge ros2 BUNDLE --ros-args -p name:=value")
    # before the DDS participant, the executor threads and the model exist (malloc.py)
    bound_arenas()
    rclpy.init(args=["fusion-edge", *ros_args])
    node = None
    try:
        overrides = [Parameter("bundle", value=str(bundle))] if bundle else []
        node = FusionEdgeNode(open_pipeline, parameter_overrides=overrides)
        print(f"fusion_edge node ready: {node.get_fully_qualified_name()} on {node.pipe.backend_name} "
              f"({node.pipe.device})", file=sys.stderr, flush=True)
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown(timeout_sec=5)
        return 0
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
