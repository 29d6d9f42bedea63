"""Image cases: broken files, hostile sizes, and the odd-but-valid modes cameras and phones write."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import draw_scene


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of width x height, all zeros, a few KB on disk: the header alone
    asks for more pixels than any decoder should allocate."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    head = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(255, 0, h, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def _exif_rotated(folder: Path) -> Path:
    img = draw_scene(320, 200, 11)
    exif = Image.Exif()
    exif[0x0112] = 6                       # Orientation: rotate 90° CW to display
    return _write(folder, "exif_rotated.jpg", _jpeg(img, exif=exif.tobytes()))


def _animated_gif(folder: Path) -> Path:
    frames = [draw_scene(160, 120, s).convert("P") for s in (21, 22, 23)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return _write(folder, "animated.gif", buf.getvalue())


def _sixteen_bit(folder: Path) -> Path:
    arr = (np.linspace(0, 65535, 200 * 150).reshape(150, 200)).astype(np.uint16)
    return _write(folder, "grey16.png", _png(Image.fromarray(arr)))


def _palette_alpha(folder: Path) -> Path:
    img = draw_scene(180, 120, 12).convert("P")
    return _write(folder, "palette_alpha.png", _png(img, transparency=0))


CASES = [
    ("zero bytes", lambda d: _write(d, "zero.jpg", b""), "ImageError"),
    ("truncated JPEG", lambda d: _write(d, "trunc.jpg", _jpeg(draw_scene(640, 480, 1))[:2000]), "ImageError"),
    ("truncated PNG", lambda d: _write(d, "trunc.png", _png(draw_scene(300, 200, 2))[:700]), "ImageError"),
    ("decompression bomb (40000x40000 PNG)", lambda d: _write(d, "bomb.png", bomb_png(40000, 40000)), "ImageError"),
    ("over the size limit (10000x9000 PNG)", lambda d: _write(d, "big.png", bomb_png(10000, 9000)), "ImageError"),
    ("text file named .jpg", lambda d: _write(d, "text.jpg", b"GET / HTTP/1.1\r\n" * 20), "ImageError"),
    ("16-bit greyscale PNG", _sixteen_bit, "answers"),
    ("CMYK JPEG", lambda d: _write(d, "cmyk.jpg", _jpeg(draw_scene(240, 180, 13).convert("CMYK"))), "answers"),
    ("palette + alpha PNG", _palette_alpha, "answers"),
    ("EXIF-rotated JPEG (orientation ignored, as upstream)", _exif_rotated, "answers"),
    ("1x1 pixel", lambda d: _write(d, "one.png", _png(Image.new("RGB", (1, 1), (200, 30, 40)))), "answers"),
    ("extreme aspect 4000x2", lambda d: _write(d, "wide.png", _png(_gradient(4000, 2))), "answers"),
    ("extreme aspect 2x4000", lambda d: _write(d, "tall.png", _png(_gradient(2, 4000))), "answers"),
    ("animated GIF (first frame)", _animated_gif, "answers"),
]
