"""The `fusion_edge` ROS 2 node: answers questions about camera images on ROS 2 topics."""
