"""Test vectors for the JavaScript client, made by the Python implementation.

``clients/js/test/vectors.json`` holds what the relay itself computes: CRC-32s, checksum
texts and checksums of books (``relay.core.checksum``), and whole channel streams, the
snapshot and update frames exactly as ``relay.core.channel.Channel`` encodes them, with
their checksums. The Node tests replay them through the JS client; tests/browser/
test_js_unit.py checks the file is what this script makes, so it cannot drift.

Run ``.venv/bin/python tests/browser/gen_vectors.py`` to rewrite it after a change.
"""

from __future__ import annotations

import json
import random
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson

from relay.core.book import Book
from relay.core.channel import Channel, Kind
from relay.core.checksum import book_checksum, checksum_text
from relay.core.entry import StreamEntry
from relay.market import Market, instruments

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "clients" / "js" / "test" / "vectors.json"
TS0 = 1_732_600_000_000_000


def _payload(frame: bytes) -> str:
    """The text of one unmasked WebSocket text frame (header stripped)."""
    n = frame[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return frame[start:].decode()


def _case(name: str, payload: dict[str, Any], depth: int = 10) -> dict[str, Any]:
    book = Book.from_payload(payload)
    bids, asks = book.bid_levels(depth), book.ask_levels(depth)
    return {
        "name": name,
        "bids": [list(level) for level in book.bid_levels()],
        "asks": [list(level) for level in book.ask_levels()],
        "depth": depth,
        "text": checksum_text(bids, asks, depth),
        "checksum": book_checksum(book, depth),
    }


def _checksum_cases() -> list[dict[str, Any]]:
    worked = {
        "bids": [["100.5", "1.25"], ["100.0", "3"], ["99.5", "0.010"]],
        "asks": [["101.0", "2"], ["101.5", "0.5"]],
    }
    deep = {
        "bids": [[f"{100 - i}.5", f"{i + 1}"] for i in range(15)],
        "asks": [[f"{101 + i}.25", f"0.{i + 1:03d}"] for i in range(12)],
    }
    cases = [
        _case("worked example (docs/protocol.md)", worked),
        _case("empty book", {"bids": [], "asks": []}),
        _case("asks only", {"bids": [], "asks": [["5", "1"], ["6", "2"]]}),
        _case("bids only", {"bids": [["5", "1"], ["4", "2"], ["3", "3"]], "asks": []}),
        _case("depth 3 of a deeper book", deep, depth=3),
        _case("depth 1", deep, depth=1),
        _case("depth 10 of 15 bids and 12 asks", deep),
        _case("depth 25", deep, depth=25),
        _case("more bids than asks", {**deep, "asks": deep["asks"][:2]}),
        _case("strings, not values: 100.50", {"bids": [["100.50", "1.25"]], "asks": []}),
        _case("strings, not values: 100.5", {"bids": [["100.5", "1.25"]], "asks": []}),
        _case("leading zeros kept", {"bids": [["0099.5", "01"]], "asks": [["100", "0.10"]]}),
        _case("unordered input", {"bids": [["1", "1"], ["3", "1"], ["2", "1"]]}),
    ]
    for inst in instruments(4):
        market = Market(inst, random.Random(inst.symbol), depth=30)
        for _ in range(50):
            market.step()
        cases.append(_case(f"simulated {inst.symbol}", market.book_payload()))
    return cases


def _crc_cases() -> list[dict[str, Any]]:
    texts = [
        "",
        "a",
        "123456789",
        "100.5:1.25:101.0:2",
        "The quick brown fox jumps over the lazy dog",
    ]
    return [{"text": t, "crc32": zlib.crc32(t.encode())} for t in texts]


def _stream(
    channel: str, epoch: str, steps: list[dict[str, Any]], start: dict[str, Any]
) -> dict[str, Any]:
    """A book channel's frames as the relay sends them: a snapshot, then every update."""
    ch = Channel(channel, Kind.BOOK, history=10, trades_kept=0)
    ch.reset(epoch=epoch, seq=1, ts=TS0, state=start)
    frames = [_payload(ch.snapshot())]
    for i, diff in enumerate(steps, start=2):
        fields = {b"seq": b"%d" % i, b"ts": b"%d" % (TS0 + i * 1000), b"data": orjson.dumps(diff)}
        outcome = ch.apply(StreamEntry(f"{i}-0", fields))
        frames.append(_payload(outcome.frame))  # type: ignore[union-attr]
    return {"channel": channel, "frames": frames, "final": ch.book.to_payload()}


def _streams() -> list[dict[str, Any]]:
    streams = []
    for inst in instruments(2):
        market = Market(inst, random.Random(f"stream-{inst.symbol}"), depth=40)
        start = market.book_payload()
        steps = [market.step()[0] for _ in range(250)]
        streams.append(_stream(f"book.{inst.symbol}", "vectors-1", steps, start))
    # Levels are keyed by value: "100.50" and "0100.5" name the level written "100.5".
    start = {"bids": [["100.5", "1"], ["100", "2"]], "asks": [["101", "1"], ["102.25", "3"]]}
    steps = [
        {"bids": [["100.50", "4"]], "asks": []},
        {"bids": [["0100.5", "0.000"]], "asks": [["101.0", "0"]]},
        {"bids": [["99.75", "1.5"], ["100.25", "0.5"]], "asks": [["101.5", "2"]]},
        {"bids": [], "asks": [["102.250", "0"], ["103", "1"]]},
        {"bids": [["100.25", "0"], ["100", "0"], ["99.75", "0"]], "asks": []},
        {"bids": [["1", "1"]], "asks": []},
    ]
    streams.append(_stream("book.KEYS-TEST", "vectors-1", steps, start))
    return streams


def build_vectors() -> dict[str, Any]:
    return {
        "comment": "made by tests/browser/gen_vectors.py from relay.core; do not edit",
        "crc32": _crc_cases(),
        "checksums": _checksum_cases(),
        "streams": _streams(),
    }


def render() -> str:
    """The vectors as JSON, one vector (or frame) a line, so that diffs stay readable."""

    def dump(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    lines = ["{"]
    vectors = build_vectors()
    for i, (key, value) in enumerate(vectors.items()):
        end = "," if i < len(vectors) - 1 else ""
        if key != "streams":
            if isinstance(value, list):
                items = ",\n".join(f"  {dump(item)}" for item in value)
                lines.append(f" {dump(key)}: [\n{items}\n ]{end}")
            else:
                lines.append(f" {dump(key)}: {dump(value)}{end}")
            continue
        streams = []
        for stream in value:
            frames = ",\n".join(f"    {dump(frame)}" for frame in stream["frames"])
            streams.append(
                f'  {{"channel": {dump(stream["channel"])},\n'
                f'   "final": {dump(stream["final"])},\n'
                f'   "frames": [\n{frames}\n   ]}}'
            )
        lines.append(f" {dump(key)}: [\n" + ",\n".join(streams) + f"\n ]{end}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == vectors
    return text


def main() -> int:
    VECTORS.write_text(render())
    print(f"wrote {VECTORS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
