"""Images of a request: an `image_url` part → checked bytes → RGB image + its content key.

Sources: `data:image/png|jpeg|webp;base64,...` always; `file://` only under the folder given with
--allow-local-files (symlinks resolved before the check); `http(s)://` only with
--allow-remote-images, with a byte cap and a timeout. Decoding reuses the camera app's upload
checks (leading bytes must match the type, a pixel-count limit before decoding: no image bombs).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from fusion_edge.apps.camera_qa.images import ALLOWED_UPLOADS, UploadError, decode_upload

from .errors import ApiError, bad_request

TYPES = ("image/png", "image/jpeg", "image/webp")
PARAM = "messages"


@dataclass(frozen=True)
class ImageSettings:
    max_bytes: int = 20 * 1024 * 1024      # encoded image size, after base64 decoding
    local_dir: Path | None = None          # --allow-local-files DIR (None: file:// refused)
    allow_remote: bool = False             # --allow-remote-images
    remote_timeout_s: float = 10.0


def load_image_url(url, settings: ImageSettings) -> tuple[Image.Image, str]:
    """An image_url string → (RGB image, sha256 key of its decoded pixels). Raises ApiError (400)."""
    if not isinstance(url, str) or not url:
        raise bad_request("image_url.url must be a non-empty string.", "send a data: URL", PARAM)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data, ctype = _from_data_url(url)
    elif scheme == "file":
        data, ctype = _from_file(url, settings)
    elif scheme in ("http", "https"):
        data, ctype = _from_remote(url, settings)
    else:
        raise bad_request(f"image URLs with scheme '{scheme or url[:16]}' are not accepted.",
                          "send the image inline as data:image/png;base64,...", PARAM, "invalid_image_url")
    image = _decode(data, ctype, settings.max_bytes)
    return image, image_key(image)


def image_key(image: Image.Image) -> str:
    """Content key of decoded pixels: the same picture in another encoding shares a scene."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _from_data_url(url: str) -> tuple[bytes, str]:
    head, sep, payload = url.partition(",")
    meta = head[5:].lower().split(";")          # "data:" + type;base64
    if not sep or "base64" not in meta[1:]:
        raise bad_request("the data: URL is not base64 (expected data:image/png;base64,...).",
                          "encode the image bytes with base64", PARAM, "invalid_image_url")
    ctype = "image/jpeg" if meta[0] == "image/jpg" else meta[0]
    if ctype not in TYPES:
        raise bad_request(f"data: URLs must hold PNG, JPEG or WebP images, not '{meta[0] or 'no type'}'.",
                          "send image/png, image/jpeg or image/webp", PARAM, "invalid_image")
    try:
        return base64.b64decode(payload.strip(), validate=True), ctype
    except (binascii.Error, ValueError):
        raise bad_request("the data: URL's base64 payload is malformed.",
                          "encode the image with standard base64 (A-Z a-z 0-9 + /, padded with =)",
                          PARAM, "invalid_base64") from None


def _from_file(url: str, s: ImageSettings) -> tuple[bytes, str]:
    if s.local_dir is None:
        raise bad_request("file:// image URLs are refused (local files are off).",
                          "send the image as a data: URL, or start the server with --allow-local-files DIR",
                          PARAM, "local_files_disabled")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise bad_request("file:// URLs must name a file on this machine.", "use file:///path/in/the/folder", PARAM)
    root = s.local_dir.resolve()
    try:
        path = Path(unquote(parts.path)).resolve(strict=True)     # symlinks resolved before the check
    except (OSError, RuntimeError):
        raise bad_request("the local image does not exist.", f"use a file under {root}", PARAM,
                          "image_not_found") from None
    if not path.is_relative_to(root) or not path.is_file():
        raise ApiError(403, "the local image is outside the folder allowed by --allow-local-files.",
                       f"use a file under {root}", PARAM, "path_not_allowed")
    if path.stat().st_size > s.max_bytes:
        raise bad_request(f"the image file is {path.stat().st_size} bytes; the limit is {s.max_bytes}.",
                          "use a smaller image", PARAM, "image_too_large")
    data = path.read_bytes()
    return data, _sniff(data)


def _from_remote(url: str, s: ImageSettings) -> tuple[bytes, str]:
    if not s.allow_remote:
        raise bad_request("http(s) image URLs are refused (remote images are off).",
                          "send the image as a data: URL, or start the server with --allow-remote-images",
                          PARAM, "remote_images_disabled")
    deadline = time.monotonic() + s.remote_timeout_s        # the whole fetch, not each read
    try:
        with _OPENER.open(url, timeout=s.remote_timeout_s) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > s.max_bytes:
                raise _too_large(int(declared), s.max_bytes)
            data = bytearray()
            while len(data) <= s.max_bytes:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not received within {s.remote_timeout_s:g} s")
                chunk = resp.read1(min(64 * 1024, s.max_bytes + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
    except ApiError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise bad_request(f"the image at {url[:200]} could not be fetched ({getattr(e, 'reason', e)}).",
                          "check the URL, or send the image as a data: URL", PARAM, "image_fetch_failed") from None
    if len(data) > s.max_bytes:
        raise _too_large(len(data), s.max_bytes)
    blob = bytes(data)
    return blob, _sniff(blob)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects to ftp:// too; a remote image may only move to another http(s) URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirected to a non-http(s) URL ({newurl[:100]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _sniff(data: bytes) -> str:
    for ctype in TYPES:
        if ALLOWED_UPLOADS[ctype][0](data[:16]):
            return ctype
    raise bad_request("the image is not a PNG, JPEG or WebP file.", "send a PNG, JPEG or WebP image", PARAM,
                      "invalid_image")


def _too_large(size: int, limit: int) -> ApiError:
    return bad_request(f"the image is {size} bytes; the limit is {limit}.", "send a smaller image", PARAM,
                       "image_too_large")


def _decode(data: bytes, ctype: str, max_bytes: int) -> Image.Image:
    try:
        return decode_upload(data, ctype, max_bytes)
    except UploadError as e:       # wrong magic, truncated, > 50 MP (a bomb), over the byte limit
        code = "image_too_large" if e.status == 413 else "invalid_image"
        raise bad_request(e.problem, e.fix, PARAM, code) from None
