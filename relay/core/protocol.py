"""The client side of the contract: requests a client may send, and the codes we answer with.

Parsing returns a value, never raises: a request, or a ``Reject`` that carries the stable
error code and the request's id (contract rule 5). Codes are data documented in
docs/protocol.md and used verbatim on the wire, in logs and as metric labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from relay.core.channel import Kind, parse_channel_name
from relay.core.frames import reply_frame

RequestId = int | str | None

MAX_ID_LENGTH = 64
MAX_SAFE_INT = 2**53 - 1  # ids are echoed to JavaScript clients


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    UNKNOWN_OP = "unknown_op"
    INVALID_ID = "invalid_id"
    INVALID_CHANNEL = "invalid_channel"
    UNKNOWN_CHANNEL = "unknown_channel"
    INVALID_RESUME = "invalid_resume"
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN = "forbidden"  # the connection's token does not cover the channel


class CloseCode(IntEnum):
    """Close codes of contract rule 6."""

    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4000


@dataclass(frozen=True, slots=True)
class Position:
    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: RequestId
    channel: str
    kind: Kind
    resume: Position | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: RequestId
    channel: str


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId


@dataclass(frozen=True, slots=True)
class Reject:
    id: RequestId
    code: ErrorCode
    message: str

    def frame(self) -> bytes:
        return error_frame(self.id, self.code, self.message)


Request = Subscribe | Unsubscribe | Ping


def parse_request(text: str | bytes) -> Request | Reject:
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Reject(None, ErrorCode.INVALID_JSON, "frame is not valid JSON")
    if not isinstance(message, dict):
        return Reject(None, ErrorCode.INVALID_JSON, "frame must be a JSON object")
    request_id = message.get("id")
    if not _valid_id(request_id):
        return Reject(
            None, ErrorCode.INVALID_ID, "id must be an integer or a string of <= 64 chars"
        )
    op = message.get("op")
    if op == "subscribe":
        return _subscribe(request_id, message)
    if op == "unsubscribe":
        channel = message.get("channel")
        if not isinstance(channel, str) or parse_channel_name(channel) is None:
            return _bad_channel(request_id, channel)
        return Unsubscribe(request_id, channel)
    if op == "ping":
        return Ping(request_id)
    return Reject(request_id, ErrorCode.UNKNOWN_OP, f"unknown op: {str(op)[:40]!r}")


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_SAFE_INT <= value <= MAX_SAFE_INT
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def _bad_channel(request_id: RequestId, channel: Any) -> Reject:
    if not isinstance(channel, str):
        return Reject(request_id, ErrorCode.INVALID_CHANNEL, "channel must be a string")
    return Reject(
        request_id,
        ErrorCode.INVALID_CHANNEL,
        f"invalid channel {channel[:60]!r}: expected <book|trades>.<symbol>",
    )


def _subscribe(request_id: RequestId, message: dict[str, Any]) -> Subscribe | Reject:
    channel = message.get("channel")
    kind = parse_channel_name(channel) if isinstance(channel, str) else None
    if kind is None or not isinstance(channel, str):
        return _bad_channel(request_id, channel)
    resume = message.get("resume")
    if resume is None:
        return Subscribe(request_id, channel, kind, None)
    if (
        not isinstance(resume, dict)
        or not isinstance(resume.get("epoch"), str)
        or not isinstance(resume.get("seq"), int)
        or isinstance(resume.get("seq"), bool)
    ):
        return Reject(
            request_id,
            ErrorCode.INVALID_RESUME,
            'resume must be {"epoch": <string>, "seq": <integer>}',
        )
    return Subscribe(request_id, channel, kind, Position(resume["epoch"], resume["seq"]))


# -- replies ----------------------------------------------------------------------------


def _with_id(kind: str, request_id: RequestId) -> dict[str, Any]:
    return {"type": kind, "id": request_id} if request_id is not None else {"type": kind}


def subscribed_frame(
    request_id: RequestId, channel: str, epoch: str, seq: int, *, resumed: bool | None = None
) -> bytes:
    message = _with_id("subscribed", request_id) | {"channel": channel, "epoch": epoch, "seq": seq}
    if resumed is not None:
        message["resumed"] = resumed
    return reply_frame(message)


def unsubscribed_frame(request_id: RequestId, channel: str) -> bytes:
    return reply_frame(_with_id("unsubscribed", request_id) | {"channel": channel})


def pong_frame(request_id: RequestId) -> bytes:
    return reply_frame(_with_id("pong", request_id))


def error_frame(request_id: RequestId, code: ErrorCode, message: str) -> bytes:
    return reply_frame(_with_id("error", request_id) | {"code": code.value, "message": message})
