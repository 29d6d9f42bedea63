"""The protobuf wire format, read directly: varints and the fields of one message.

Enough for the few messages fusion-edge reads without their generated classes: an ONNX graph's
external-data references (runtime/onnx_refs.py; the runtime does not depend on `onnx`) and a
sentencepiece model (export/spm_convert.py). Length-delimited values are slices of the buffer
given (a memoryview over a memory map stays one: nothing is copied).
"""
from __future__ import annotations

from collections.abc import Iterator

VARINT, I64, LEN, I32 = 0, 1, 2, 5          # wire types


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def varint(buf, i: int) -> tuple[int, int]:
    """(value, next offset) of the varint at offset i."""
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) for every field of one message: an int for VARINT, a
    slice of `buf` for LEN (the bytes), I64 (8 bytes) and I32 (4 bytes)."""
    i, n = 0, len(buf)
    while i < n:
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, i = varint(buf, i)
            yield number, wire, value
            continue
        if wire == LEN:
            size, i = varint(buf, i)
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
        else:
            raise WireError(f"unsupported wire type {wire}")
        if i + size > n:
            raise WireError("field runs past the end of the message")
        yield number, wire, buf[i:i + size]
        i += size
