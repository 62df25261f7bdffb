"""relay.core.frames: complete, unmasked WebSocket frames built once for every subscriber."""

from __future__ import annotations

import struct

import orjson
import pytest
from wsdecode import OP_CLOSE, OP_TEXT, message, single_frame, split_frames, text_payload

from relay.core.frames import reply_frame, snapshot_frame, update_frame, ws_close, ws_text


@pytest.mark.parametrize(
    ("length", "header_length"),
    [
        (0, 2),
        (1, 2),
        (125, 2),
        (126, 4),
        (127, 4),
        (65535, 4),
        (65536, 10),
        (70000, 10),
    ],
)
def test_ws_text_round_trips_with_the_shortest_length_encoding(
    length: int, header_length: int
) -> None:
    payload = bytes(ord("a") + i % 26 for i in range(length))
    frame = single_frame(ws_text(payload))
    assert frame.fin
    assert frame.opcode == OP_TEXT
    assert frame.payload == payload
    assert frame.header_length == header_length


def test_concatenated_frames_split_back_in_order() -> None:
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65536, b"{}"]
    frames = split_frames(b"".join(ws_text(p) for p in payloads))
    assert [f.payload for f in frames] == payloads


def test_ws_close_carries_the_code_and_reason() -> None:
    frame = single_frame(ws_close(1001, "relay shutting down"))
    assert frame.fin
    assert frame.opcode == OP_CLOSE
    assert frame.payload == struct.pack("!H", 1001) + b"relay shutting down"


def test_ws_close_without_reason_is_just_the_code() -> None:
    frame = single_frame(ws_close(4000))
    assert frame.opcode == OP_CLOSE
    assert frame.payload == b"\x0f\xa0"


def test_ws_close_keeps_a_long_reason_within_the_control_frame_limit() -> None:
    frame = single_frame(ws_close(1008, "r" * 300))
    # RFC 6455 5.5: control frame payloads are at most 125 bytes, 2 of them the code.
    assert len(frame.payload) == 125
    assert frame.payload == struct.pack("!H", 1008) + b"r" * 123


def test_ws_close_truncates_a_non_ascii_reason_to_valid_utf8() -> None:
    frame = single_frame(ws_close(1008, "é" * 100))
    assert len(frame.payload) <= 125
    # RFC 6455 5.5.1 / 8.1: the reason is UTF-8; a client fails the connection otherwise.
    reason = frame.payload[2:].decode("utf-8")
    assert reason == "é" * 61


def test_update_frame_puts_the_head_first_and_splices_the_data_untouched() -> None:
    data = b'{ "bids" : [["43100.50", "1.2500"]], "extra": 1 }'
    payload = text_payload(update_frame(b"book.BTC-USD", 1041, 1732600000000123, data))
    assert payload == (
        b'{"type":"update","channel":"book.BTC-USD","seq":1041,"ts":1732600000000123,"data":'
        + data
        + b"}"
    )
    assert orjson.loads(payload)["data"] == orjson.loads(data)


def test_snapshot_frame_puts_type_channel_epoch_seq_ts_before_data() -> None:
    data = {"bids": [["43100.5", "1.25"]], "asks": [["43101.0", "2"]]}
    frame = snapshot_frame("book.BTC-USD", "e1", 1040, 1732600000000000, data)
    payload = text_payload(frame)
    assert payload.startswith(
        b'{"type":"snapshot","channel":"book.BTC-USD","epoch":"e1","seq":1040,'
        b'"ts":1732600000000000,"data":'
    )
    assert message(frame) == {
        "type": "snapshot",
        "channel": "book.BTC-USD",
        "epoch": "e1",
        "seq": 1040,
        "ts": 1732600000000000,
        "data": data,
    }


def test_snapshot_frame_escapes_an_epoch_that_needs_it() -> None:
    frame = snapshot_frame("book.X", 'e"1\\', 1, 2, {})
    assert message(frame)["epoch"] == 'e"1\\'


def test_reply_frame_keeps_the_dict_order_on_the_wire() -> None:
    payload = text_payload(reply_frame({"type": "pong", "id": 4}))
    assert payload == b'{"type":"pong","id":4}'
