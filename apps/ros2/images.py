"""ROS 2 image messages → RGB images for the runtime.

sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, rows `step` bytes apart) becomes an
HxWxC uint8 array in RGB order and goes through the runtime's `load_image`, so alpha and
grey are handled exactly as for a file; CompressedImage (jpeg, png) is checked against its
leading bytes and decoded by the same loader.
"""
from __future__ import annotations

import numpy as np
from fusion_edge.runtime.errors import ImageError
from fusion_edge.runtime.preprocess import MAX_PIXELS, load_image
from PIL import Image

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
# CompressedImage.format mentions the codec ("jpeg", "png", "bgr8; jpeg compressed bgr8")
CODECS = {"jpeg": b"\xff\xd8\xff", "jpg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
FIX_ENCODING = "publish rgb8, bgr8, rgba8, bgra8 or mono8 (set the camera driver's pixel format)"


def image_from_raw(encoding: str, width: int, height: int, step: int, data) -> Image.Image:
    """sensor_msgs/Image fields → RGB PIL image; ImageError for an unusable message."""
    enc = encoding.strip().lower()
    if enc not in CHANNELS:
        raise ImageError(f"image encoding '{encoding}' is not supported.", FIX_ENCODING)
    if width <= 0 or height <= 0:
        raise ImageError(f"the image is {width}x{height} pixels.", "publish an image with at least one pixel")
    if width * height > MAX_PIXELS:
        raise ImageError(f"the image is {width}x{height}, larger than fusion-edge accepts.",
                         "publish images below 16384x16384")
    c = CHANNELS[enc]
    if step < width * c:
        raise ImageError(f"the image row step is {step} bytes, less than width x channels ({width * c}).",
                         "fix the publisher: step must be at least width x bytes per pixel")
    if len(data) < step * height:
        raise ImageError(f"the image has {len(data)} bytes of data; {width}x{height} {enc} with step {step} "
                         f"needs {step * height}.", "fix the publisher: data must hold step x height bytes")
    rows = np.frombuffer(data, np.uint8, count=step * height).reshape(height, step)
    pixels = rows[:, :width * c].reshape(height, width, c)
    if enc.startswith("bgr"):
        pixels = pixels[..., [2, 1, 0, 3][:c]]
    return load_image(np.ascontiguousarray(pixels))


def image_from_compressed(fmt: str, data) -> Image.Image:
    """sensor_msgs/CompressedImage fields → RGB PIL image; ImageError for an unusable message."""
    codec = next((k for k in CODECS if k in fmt.lower()), None)
    if codec is None:
        raise ImageError(f"compressed image format '{fmt}' is not supported.", "publish jpeg or png")
    raw = bytes(data)
    if not raw.startswith(CODECS[codec]):
        raise ImageError(f"the compressed image says '{fmt}' but its data is not {codec.upper()}.",
                         "fix the publisher's format field or its encoder")
    return load_image(raw)
