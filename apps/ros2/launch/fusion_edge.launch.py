"""ROS 2 launch file for the fusion_edge node.

    ros2 launch fusion_edge.launch.py bundle:=/models/fusion-q8 image:=/camera/image_raw
    ros2 launch "$(fusion-edge ros2 --launch-file)" bundle:=/models/fusion-q8   # this file's path

fusion-edge is a pip package, not an ament package, so the node starts as the
`fusion-edge ros2` command (ExecuteProcess) with the usual --ros-args; SIGINT from
`ros2 launch` shuts it down cleanly.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

# launch argument → (default, description); all but image / namespace become node parameters
ARGUMENTS = {
    "bundle": (None, "exported bundle folder"),
    "device": ("auto", "auto | cpu | cuda"),
    "max_new_tokens": ("64", "most tokens per answer"),
    "temperature": ("0.0", "0 = greedy"),
    "max_image_age_s": ("0.0", "refuse frames older than this; 0 = any age"),
    "watch_question": ("''", "standing question asked on new frames ('' = none)"),
    "watch_period_s": ("0.0", "seconds between watch answers; 0 = off"),
    "image": ("~/image", "camera topic remapped onto ~/image"),
    "namespace": ("/", "namespace of the node"),
}
NOT_PARAMETERS = ("bundle", "image", "namespace")


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(name, description=desc, **({} if default is None else {"default_value": default}))
                for name, (default, desc) in ARGUMENTS.items()]
    cmd = ["fusion-edge", "ros2", LaunchConfiguration("bundle"), "--ros-args",
           "-r", ["__ns:=", LaunchConfiguration("namespace")],
           "-r", ["~/image:=", LaunchConfiguration("image")]]
    for name in ARGUMENTS:
        if name not in NOT_PARAMETERS:
            cmd += ["-p", [f"{name}:=", LaunchConfiguration(name)]]
    node = ExecuteProcess(cmd=cmd, name="fusion_edge", output="screen", sigterm_timeout="30")
    return LaunchDescription([*declared, node])
