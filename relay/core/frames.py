"""Relay-to-client frames, built once as complete WebSocket frames (RFC 6455 section 5.2).

Server frames are never masked, so one bytes object can be written to every subscriber.
Every relay frame puts its head (``type``, ``channel``, ``epoch``, ``seq``, ``ts``,
``checksum``) before
``data`` so that a client can route it without parsing the payload (PROTOCOL.md).
``update.data`` is the producer's bytes, spliced in untouched (contract rule 1).
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

_FIN_TEXT = 0x81
_FIN_CLOSE = 0x88


def ws_text(payload: bytes) -> bytes:
    """Wrap a UTF-8 JSON payload into one unmasked, final text frame."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, n) + payload


def ws_close(code: int, reason: str = "") -> bytes:
    # At most 123 bytes of reason (RFC 6455 5.5), cut on a character boundary: UTF-8.
    text = reason.encode()[:123].decode(errors="ignore").encode()
    body = struct.pack("!H", code) + text
    return bytes((_FIN_CLOSE, len(body))) + body


def update_frame(
    channel: bytes, seq: int, ts: int, data: bytes, checksum: int | None = None
) -> bytes:
    """``{"type":"update",...,"data":<producer bytes>}`` as a WebSocket frame."""
    if checksum is None:
        return ws_text(
            b'{"type":"update","channel":"%s","seq":%d,"ts":%d,"data":%s}'
            % (channel, seq, ts, data)
        )
    return ws_text(
        b'{"type":"update","channel":"%s","seq":%d,"ts":%d,"checksum":%d,"data":%s}'
        % (channel, seq, ts, checksum, data)
    )


def snapshot_frame(
    channel: str, epoch: str, seq: int, ts: int, data: Any, checksum: int | None = None
) -> bytes:
    head: dict[str, Any] = {
        "type": "snapshot",
        "channel": channel,
        "epoch": epoch,
        "seq": seq,
        "ts": ts,
    }
    if checksum is not None:
        head["checksum"] = checksum
    return ws_text(orjson.dumps(head)[:-1] + b',"data":' + orjson.dumps(data) + b"}")


def reply_frame(message: dict[str, Any]) -> bytes:
    """A control reply (subscribed, unsubscribed, pong, error); dict order is wire order."""
    return ws_text(orjson.dumps(message))
