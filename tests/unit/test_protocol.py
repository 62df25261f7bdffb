"""relay.core.protocol: client requests in, stable error codes and reply frames out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from wsdecode import message, text_payload

from relay.core.channel import Kind
from relay.core.protocol import (
    MAX_SAFE_INT,
    CloseCode,
    ErrorCode,
    Ping,
    Position,
    Reject,
    Subscribe,
    Unsubscribe,
    error_frame,
    parse_request,
    pong_frame,
    subscribed_frame,
    unsubscribed_frame,
)


def request(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def rejected(text: str | bytes) -> Reject:
    result = parse_request(text)
    assert isinstance(result, Reject), result
    return result


# -- invalid_json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        b'{"op": "ping"',
        b"\xff\xfe",
        "[]",
        '[{"op": "ping"}]',
        '"ping"',
        "42",
        "null",
        "true",
    ],
)
def test_anything_but_a_json_object_is_invalid_json(text: str | bytes) -> None:
    reject = rejected(text)
    assert reject.code is ErrorCode.INVALID_JSON
    assert reject.id is None


# -- invalid_id --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        True,
        False,
        1.5,
        1.0,
        "x" * 65,
        MAX_SAFE_INT + 1,
        -MAX_SAFE_INT - 1,
        2**63,
        [1],
        {"n": 1},
    ],
)
def test_an_id_that_is_not_a_small_integer_or_short_string_is_invalid(bad_id: Any) -> None:
    reject = rejected(request(op="ping", id=bad_id))
    assert reject.code is ErrorCode.INVALID_ID
    # An invalid id cannot be echoed: the error goes out without one.
    assert reject.id is None
    assert "id" not in message(reject.frame())


def test_an_integer_id_too_large_for_64_bits_is_invalid() -> None:
    reject = rejected(b'{"op": "ping", "id": 123456789012345678901234567890}')
    assert reject.code is ErrorCode.INVALID_ID


def test_the_id_is_checked_before_the_op() -> None:
    assert rejected(request(op="bogus", id=True)).code is ErrorCode.INVALID_ID


@pytest.mark.parametrize(
    "good_id", [0, 1, -1, MAX_SAFE_INT, -MAX_SAFE_INT, "", "abc", "x" * 64, "é" * 64]
)
def test_ids_within_the_limits_are_accepted_and_kept(good_id: int | str) -> None:
    assert parse_request(request(op="ping", id=good_id)) == Ping(good_id)


# -- unknown_op --------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["subscrib", "SUBSCRIBE", "Ping", "", 5, None, ["ping"]])
def test_an_unknown_op_is_rejected_with_the_id_echoed(op: Any) -> None:
    reject = rejected(request(op=op, id=7, channel="book.BTC-USD"))
    assert reject.code is ErrorCode.UNKNOWN_OP
    assert reject.id == 7


def test_a_missing_op_is_an_unknown_op() -> None:
    reject = rejected(request(id="a", channel="book.BTC-USD"))
    assert reject.code is ErrorCode.UNKNOWN_OP
    assert reject.id == "a"


# -- invalid_channel ---------------------------------------------------------------------

BAD_CHANNELS: list[Any] = [
    5,
    None,
    ["book.BTC-USD"],
    "",
    "book",
    "book.",
    ".BTC-USD",
    "book.BTC USD",
    "book.BTC/USD",
    "book.BTC$",
    "book.BTC-USD\n",
    "book." + "A" * 41,
    "ticker.BTC",
    "BOOK.BTC-USD",
]


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("channel", BAD_CHANNELS)
def test_a_bad_channel_is_rejected_with_the_id_echoed(op: str, channel: Any) -> None:
    reject = rejected(request(op=op, id=3, channel=channel))
    assert reject.code is ErrorCode.INVALID_CHANNEL
    assert reject.id == 3


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe"])
def test_a_missing_channel_is_an_invalid_channel(op: str) -> None:
    reject = rejected(request(op=op, id=3))
    assert reject.code is ErrorCode.INVALID_CHANNEL
    assert reject.id == 3


# -- invalid_resume ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "resume",
    [
        5,
        "e1:1041",
        ["e1", 1041],
        {},
        {"epoch": "e1"},
        {"seq": 1041},
        {"epoch": 1, "seq": 1041},
        {"epoch": None, "seq": 1041},
        {"epoch": "e1", "seq": "1041"},
        {"epoch": "e1", "seq": 1041.0},
        {"epoch": "e1", "seq": True},
        {"epoch": "e1", "seq": None},
    ],
)
def test_a_bad_resume_is_rejected_with_the_id_echoed(resume: Any) -> None:
    reject = rejected(request(op="subscribe", id=2, channel="book.BTC-USD", resume=resume))
    assert reject.code is ErrorCode.INVALID_RESUME
    assert reject.id == 2


def test_every_code_parse_request_produces_is_covered_above() -> None:
    samples: list[str | bytes] = [
        "[]",
        request(op="ping", id=True),
        request(op="nope"),
        request(op="subscribe", channel="ticker.BTC"),
        request(op="subscribe", channel="book.BTC-USD", resume=[]),
    ]
    codes = set()
    for sample in samples:
        result = parse_request(sample)
        assert isinstance(result, Reject)
        codes.add(result.code)
    assert codes == {
        ErrorCode.INVALID_JSON,
        ErrorCode.INVALID_ID,
        ErrorCode.UNKNOWN_OP,
        ErrorCode.INVALID_CHANNEL,
        ErrorCode.INVALID_RESUME,
    }


# -- valid requests ----------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [1, "sub-1", None])
def test_subscribe_parses(request_id: int | str | None) -> None:
    fields: dict[str, Any] = {"op": "subscribe", "channel": "book.BTC-USD"}
    if request_id is not None:
        fields["id"] = request_id
    assert parse_request(orjson.dumps(fields)) == Subscribe(
        request_id, "book.BTC-USD", Kind.BOOK, None
    )


def test_subscribe_to_trades_with_a_resume_parses() -> None:
    text = (
        '{"op": "subscribe", "channel": "trades.ETH-USD", "id": 2,'
        ' "resume": {"epoch": "e1", "seq": 1041}}'
    )
    assert parse_request(text) == Subscribe(2, "trades.ETH-USD", Kind.TRADES, Position("e1", 1041))


def test_a_null_resume_is_a_plain_subscribe() -> None:
    result = parse_request(request(op="subscribe", channel="book.BTC-USD", resume=None))
    assert result == Subscribe(None, "book.BTC-USD", Kind.BOOK, None)


def test_extra_fields_of_a_request_are_ignored() -> None:
    result = parse_request(request(op="ping", id=4, note="hello"))
    assert result == Ping(4)


@pytest.mark.parametrize("request_id", [3, "u", None])
def test_unsubscribe_parses(request_id: int | str | None) -> None:
    fields: dict[str, Any] = {"op": "unsubscribe", "channel": "trades.BTC-USD"}
    if request_id is not None:
        fields["id"] = request_id
    assert parse_request(orjson.dumps(fields)) == Unsubscribe(request_id, "trades.BTC-USD")


@pytest.mark.parametrize("request_id", [4, "p", None])
def test_ping_parses(request_id: int | str | None) -> None:
    fields: dict[str, Any] = {"op": "ping"}
    if request_id is not None:
        fields["id"] = request_id
    assert parse_request(orjson.dumps(fields)) == Ping(request_id)


def test_a_request_may_come_as_str_or_bytes() -> None:
    assert parse_request('{"op": "ping", "id": 1}') == parse_request(b'{"op": "ping", "id": 1}')


# -- reply frames ------------------------------------------------------------------------


def test_subscribed_reply_matches_the_contract() -> None:
    frame = subscribed_frame(1, "book.BTC-USD", "e1", 1040)
    assert text_payload(frame) == (
        b'{"type":"subscribed","id":1,"channel":"book.BTC-USD","epoch":"e1","seq":1040}'
    )


@pytest.mark.parametrize("resumed", [True, False])
def test_subscribed_reply_says_whether_it_resumed(resumed: bool) -> None:
    reply = message(subscribed_frame("s", "book.BTC-USD", "e1", 1040, resumed=resumed))
    assert reply == {
        "type": "subscribed",
        "id": "s",
        "channel": "book.BTC-USD",
        "epoch": "e1",
        "seq": 1040,
        "resumed": resumed,
    }


def test_subscribed_reply_without_id_has_no_id() -> None:
    reply = message(subscribed_frame(None, "trades.ETH-USD", "e1", 7))
    assert reply == {"type": "subscribed", "channel": "trades.ETH-USD", "epoch": "e1", "seq": 7}


def test_unsubscribed_reply_matches_the_contract() -> None:
    assert text_payload(unsubscribed_frame(3, "book.BTC-USD")) == (
        b'{"type":"unsubscribed","id":3,"channel":"book.BTC-USD"}'
    )
    assert message(unsubscribed_frame(None, "book.BTC-USD")) == {
        "type": "unsubscribed",
        "channel": "book.BTC-USD",
    }


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [
        (4, {"type": "pong", "id": 4}),
        (0, {"type": "pong", "id": 0}),
        ("", {"type": "pong", "id": ""}),
        ("é✓", {"type": "pong", "id": "é✓"}),
        (None, {"type": "pong"}),
    ],
)
def test_pong_echoes_the_id_even_when_falsy(
    request_id: int | str | None, expected: dict[str, Any]
) -> None:
    assert message(pong_frame(request_id)) == expected


def test_error_reply_matches_the_contract() -> None:
    frame = error_frame(1, ErrorCode.UNKNOWN_CHANNEL, "no such channel: book.XYZ")
    assert text_payload(frame) == (
        b'{"type":"error","id":1,"code":"unknown_channel","message":"no such channel: book.XYZ"}'
    )
    assert message(error_frame(None, ErrorCode.RATE_LIMITED, "slow down")) == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
    }


def test_a_reject_answers_with_an_error_frame_for_its_id() -> None:
    reply = message(rejected(request(op="subscribe", id="r1", channel="ticker.BTC")).frame())
    assert reply["type"] == "error"
    assert reply["id"] == "r1"
    assert reply["code"] == "invalid_channel"
    assert isinstance(reply["message"], str)
    assert reply["message"]


def test_a_reject_quotes_a_hostile_channel_safely() -> None:
    channel = '"}\n' + "x" * 500
    reply = message(rejected(request(op="subscribe", id=1, channel=channel)).frame())
    assert reply["code"] == "invalid_channel"
    assert len(reply["message"]) < 200


def test_error_codes_are_the_documented_strings() -> None:
    assert {code.value for code in ErrorCode} == {
        "invalid_json",
        "binary_not_supported",
        "unknown_op",
        "invalid_id",
        "invalid_channel",
        "unknown_channel",
        "invalid_resume",
        "already_subscribed",
        "not_subscribed",
        "too_many_subscriptions",
        "rate_limited",
        "forbidden",
    }


def test_close_codes_are_those_of_the_contract() -> None:
    assert {code.name: int(code) for code in CloseCode} == {
        "GOING_AWAY": 1001,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "TRY_AGAIN_LATER": 1013,
        "SLOW_CONSUMER": 4000,
    }
