"""Stream entries as the producer writes them (PROTOCOL.md, producer side), and their parsing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


class MalformedEntry(ValueError):
    """An entry that breaks the producer contract: missing field, bad JSON or bad number."""


@dataclass(slots=True)  # one per entry read: not frozen, whose __init__ is 3x slower
class StreamEntry:
    """One raw stream entry: its stream id and its fields as bytes, as Redis returns them."""

    id: str
    fields: Mapping[bytes, bytes]


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a setattr call per field
class Entry:
    id: str
    seq: int
    ts: int
    data: bytes
    payload: Any
    traceparent: bytes | None


def _integer(fields: Mapping[bytes, bytes], name: bytes) -> int:
    raw = fields.get(name)
    if raw is None:
        raise MalformedEntry(f"missing field {name.decode()!r}")
    # int() accepts "+5", " 5" and "5_000"; the contract says a plain decimal integer.
    if not raw.isdigit():
        raise MalformedEntry(f"field {name.decode()!r} is not a decimal integer: {raw[:40]!r}")
    return int(raw)


def parse_entry(entry: StreamEntry) -> Entry:
    fields = entry.fields
    seq = _integer(fields, b"seq")
    ts = _integer(fields, b"ts")
    data = fields.get(b"data")
    if data is None:
        raise MalformedEntry("missing field 'data'")
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedEntry(f"data is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise MalformedEntry("data is not a JSON object")
    return Entry(entry.id, seq, ts, data, payload, fields.get(b"traceparent"))
