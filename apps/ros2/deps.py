"""Lazy import of rclpy and the message packages (the `ros2` extra)."""
from __future__ import annotations

import importlib
import importlib.util

from fusion_edge.runtime.errors import MissingExtraError

# module → PyPI wheel that provides it
MODULES = {
    "rclpy": "ros-rclpy",
    "std_msgs.msg": "ros-std-msgs",
    "sensor_msgs.msg": "ros-sensor-msgs",
    "std_srvs.srv": "ros-std-srvs",
}


class RosLoadError(MissingExtraError):
    """A ROS 2 package is installed but its native libraries do not load."""

    def __init__(self, package: str, err: ImportError):
        super().__init__(package, "ros2", "the ROS 2 node")
        self.problem = f"the ROS 2 package '{package}' is installed but does not load ({str(err).splitlines()[0]})."
        self.fix = ("install fusion-edge[ros2] into the environment that runs fusion-edge (the wheels find their "
                    "libraries under that environment's prefix), or source your ROS 2 setup.bash")
        self.args = (f"{self.problem}\n  fix: {self.fix}",)


def require_ros() -> None:
    """Raise MissingExtraError naming the `ros2` extra when a ROS 2 Python package is missing."""
    for module, wheel in MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError as e:
            top = module.split(".")[0]
            if _installed(top):
                raise RosLoadError(wheel, e) from None
            raise MissingExtraError(wheel, "ros2", "the ROS 2 node") from None


def _installed(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):      # sys.modules[top] is None, or a broken entry
        return False
