"""JPEG encoding for the live view and thumbnails, and checking of uploaded photos.

Uploads are checked three ways before anything decodes them fully: declared type, size
limit, and the file's leading bytes (magic numbers) must agree with an allowed format;
then Pillow decodes them with a pixel-count limit.
"""
from __future__ import annotations

import base64
import io

from PIL import Image

from fusion_edge.runtime.errors import ImageError

# declared content type → (leading bytes test, display name)
ALLOWED_UPLOADS = {
    "image/jpeg": (lambda b: b[:3] == b"\xff\xd8\xff", "JPEG"),
    "image/png": (lambda b: b[:8] == b"\x89PNG\r\n\x1a\n", "PNG"),
    "image/webp": (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "WebP"),
    "image/bmp": (lambda b: b[:2] == b"BM", "BMP"),
}
MAX_UPLOAD_PIXELS = 50_000_000      # 50 MP: larger than any phone photo, far below a bomb


class UploadError(ImageError):
    """An uploaded photo was refused. `status` is the HTTP status to answer with."""

    def __init__(self, problem: str, fix: str | None = None, status: int = 400):
        super().__init__(problem, fix)
        self.status = status


def jpeg_bytes(image: Image.Image, max_side: int = 960, quality: int = 80) -> bytes:
    """RGB image → JPEG, downscaled so its longer side is at most max_side."""
    img = image
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def thumbnail_data_url(image: Image.Image, max_side: int = 192) -> str:
    """A small JPEG as a data: URL, carried inside job events (no extra request, no cache)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image, max_side, 70)).decode("ascii")


def check_upload_type(content_type: str | None) -> str:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "image/jpg":
        ctype = "image/jpeg"
    if ctype not in ALLOWED_UPLOADS:
        raise UploadError(f"uploads must be JPEG, PNG, WebP or BMP images, not '{ctype or 'unknown type'}'.",
                          "choose a .jpg/.png/.webp/.bmp photo", status=415)
    return ctype


def decode_upload(data: bytes, content_type: str | None, max_bytes: int) -> Image.Image:
    """Checked bytes → RGB image, or UploadError with a message for the UI."""
    ctype = check_upload_type(content_type)
    if not data:
        raise UploadError("the uploaded file is empty.", "choose a photo file")
    if len(data) > max_bytes:
        raise UploadError(too_large(len(data), max_bytes), "upload a smaller photo", status=413)
    looks_like, name = ALLOWED_UPLOADS[ctype]
    if not looks_like(data[:16]):
        raise UploadError(f"the uploaded file is not a {name} image (its contents do not match its type).",
                          "upload a real JPEG/PNG/WebP/BMP photo")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_UPLOAD_PIXELS:
                raise UploadError(f"the photo is {img.width}x{img.height}, more than 50 megapixels.",
                                  "upload a smaller photo", status=413)
            img.load()
            return img.convert("RGB")
    except UploadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UploadError(f"the uploaded {name} could not be decoded ({e}).",
                          "the file may be truncated or corrupt; try another photo") from None


def too_large(size: int, max_bytes: int) -> str:
    return f"the upload is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB."
