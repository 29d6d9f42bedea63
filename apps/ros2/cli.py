"""`fusion-edge ros2 BUNDLE [--ros-args ...]`: run the `fusion_edge` ROS 2 node.

Examples:
  fusion-edge ros2 b
  fusion-edge ros2 b --ros-args -p max_new_tokens:=32 -p max_image_age_s:=1.0
  fusion-edge ros2 b --ros-args -r ~/image:=/camera/image_raw -r __ns:=/robot1
  fusion-edge ros2 b --ros-args -p watch_question:='Is the path clear?' -p watch_period_s:=2.0
"""
from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
FASTDDS_PROFILE = HERE / "fastdds_large_images.xml"
LAUNCH_FILE = HERE / "launch" / "fusion_edge.launch.py"


def add_args(p) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1] + "\nTopics, parameters and the launch file: docs/ros2.md"
    p.add_argument("bundle", nargs="?", default=None,
                   help="exported bundle folder (or give it as --ros-args -p bundle:=FOLDER)")
    p.add_argument("--fastdds-profile", action="store_true",
                   help="print the path of the Fast DDS profile for raw images over 512 KiB, and exit")
    p.add_argument("--launch-file", action="store_true", help="print the path of the ROS 2 launch file, and exit")
    p.add_argument("ros_args", nargs=argparse.REMAINDER,
                   help="--ros-args followed by ROS arguments (-p name:=value, -r from:=to, --log-level …)")


def run(args) -> int:
    if args.fastdds_profile or args.launch_file:
        print(FASTDDS_PROFILE if args.fastdds_profile else LAUNCH_FILE)
        return 0
    from .deps import require_ros
    require_ros()                       # MissingExtraError names the `ros2` extra
    from .spin import run_node
    return run_node(args.bundle, args.ros_args)
