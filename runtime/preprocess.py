"""Image loading and `static_hd` preprocessing (docs/fusion.md §2): numpy + Pillow only.

Output of `static_hd_tiles`: main tile (3, S, S) and 4 global tiles (4, 3, S, S), float32,
scaled by 1/255 and normalised with mean 0.5 / std 0.5, S = tower image size (384).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

MEAN = 0.5
STD = 0.5
# Guard against decompression bombs while still taking large camera stills (a 64 MP phone
# photo is 9248x6936): Pillow's own warning threshold, checked from the header before
# decoding. Pillow refuses outright at twice this (DecompressionBombError), also typed here.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
TOO_LARGE_FIX = f"downscale the image to at most {MAX_PIXELS / 1e6:.0f} megapixels (e.g. 9000x9000)"


@dataclass(frozen=True)
class Tiles:
    main: np.ndarray          # (3, S, S) float32: the question-guided tile
    global_tiles: np.ndarray  # (4, 3, S, S) float32: TL, TR, BL, BR of the 2S x 2S resize


def load_image(source) -> Image.Image:
    """Open a path, bytes, file object, numpy HxWx{1,3,4} uint8 array or PIL image as RGB."""
    if isinstance(source, Image.Image):
        return _to_rgb(source, "the given PIL image")
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("the image data is empty (0 bytes).", "pass the bytes of a JPEG/PNG/WebP/BMP file")
        return _open(io.BytesIO(source), "the given image bytes")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image file {path} does not exist.", "check the path")
        if path.stat().st_size == 0:
            raise ImageError(f"image file {path} is empty (0 bytes).", "use a complete JPEG/PNG/WebP/BMP file")
        return _open(path, str(path))
    if hasattr(source, "read"):
        return _open(source, "the given file object")
    raise ImageError(f"cannot read an image from a {type(source).__name__}.",
                     "pass a path, bytes, a PIL image or an HxWx3 uint8 numpy array")


def _open(fp, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # refused just below
            img = Image.open(fp)
        with img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{what} is {img.width}x{img.height}, larger than fusion-edge accepts.",
                                 TOO_LARGE_FIX)
            img.load()            # decode now so truncated files fail here, not later
            return _to_rgb(img, what)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} is too large to decode safely ({e}).", TOO_LARGE_FIX) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{what} is not a readable image ({e}).",
                         "use a complete JPEG/PNG/WebP/BMP file; the file may be truncated or corrupt") from None


def _to_rgb(img: Image.Image, what: str) -> Image.Image:
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{what} has zero size.", "use an image with at least one pixel")
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels keep their colour channels (as PIL's convert does); no
        # compositing, which is what the reference's `.convert("RGB")` gives.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageError(f"numpy image of shape {arr.shape} and dtype {arr.dtype} is not an image.",
                         "pass an HxW or HxWx{1,3,4} uint8 array in RGB order")
    if arr.size == 0:
        raise ImageError("numpy image is empty.", "pass a non-empty array")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr)), "the numpy image")


def normalize(tile: Image.Image, size: int) -> np.ndarray:
    """One tile: bicubic (re)size to size x size, /255, (x - 0.5) / 0.5, HWC → CHW float32."""
    if tile.size != (size, size):
        tile = tile.resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(tile, dtype=np.float32) * np.float32(1 / 255)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def static_hd_tiles(image, size: int = 384) -> Tiles:
    """FUSION's static_hd split: 4 global tiles of a 2S x 2S resize (row-major) + the main tile.

    PIL's `resize` with its default filter (bicubic for RGB), as the reference does.
    """
    img = load_image(image)
    big = img.resize((2 * size, 2 * size))
    boxes = [(c * size, r * size, (c + 1) * size, (r + 1) * size) for r in range(2) for c in range(2)]
    global_tiles = np.stack([normalize(big.crop(b), size) for b in boxes])
    main = normalize(img.resize((size, size)), size)
    return Tiles(main=main, global_tiles=global_tiles)
