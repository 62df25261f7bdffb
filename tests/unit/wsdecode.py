"""Decode the relay's server-to-client WebSocket frames (RFC 6455 section 5.2) in tests.

Server frames are never masked; lengths use the shortest of the 7-bit, 16-bit and 64-bit
encodings, as the RFC requires. The decoder checks both, so a test that decodes a frame
also checks that it is well formed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

OP_TEXT = 0x1
OP_CLOSE = 0x8


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    header_length: int


def read_frame(buffer: bytes, offset: int = 0) -> tuple[Frame, int]:
    """The frame starting at ``offset`` and the offset just after it."""
    if len(buffer) - offset < 2:
        raise ValueError("truncated frame header")
    first, second = buffer[offset], buffer[offset + 1]
    if first & 0x70:
        raise ValueError("reserved bits set")
    if second & 0x80:
        raise ValueError("server frames must not be masked")
    length = second & 0x7F
    header = 2
    if length == 126:
        (length,) = struct.unpack_from("!H", buffer, offset + 2)
        header = 4
        if length < 126:
            raise ValueError("16-bit length used for a short payload")
    elif length == 127:
        (length,) = struct.unpack_from("!Q", buffer, offset + 2)
        header = 10
        if length < 65536:
            raise ValueError("64-bit length used for a payload that fits 16 bits")
    start = offset + header
    end = start + length
    if end > len(buffer):
        raise ValueError("truncated frame payload")
    frame = Frame(bool(first & 0x80), first & 0x0F, buffer[start:end], header)
    return frame, end


def split_frames(buffer: bytes) -> list[Frame]:
    """Every frame of a buffer holding whole frames back to back."""
    frames: list[Frame] = []
    offset = 0
    while offset < len(buffer):
        frame, offset = read_frame(buffer, offset)
        frames.append(frame)
    return frames


def single_frame(buffer: bytes) -> Frame:
    """The one frame that ``buffer`` holds, with nothing after it."""
    frame, end = read_frame(buffer)
    if end != len(buffer):
        raise ValueError(f"{len(buffer) - end} bytes after the frame")
    return frame


def text_payload(buffer: bytes) -> bytes:
    """The payload of a buffer that is exactly one final text frame."""
    frame = single_frame(buffer)
    if not frame.fin or frame.opcode != OP_TEXT:
        raise ValueError(f"not a final text frame: fin={frame.fin} opcode={frame.opcode}")
    return frame.payload


def message(buffer: bytes) -> dict[str, Any]:
    """The JSON object carried by a buffer that is exactly one final text frame."""
    decoded = orjson.loads(text_payload(buffer))
    if not isinstance(decoded, dict):
        raise ValueError(f"not a JSON object: {decoded!r}")
    return decoded
