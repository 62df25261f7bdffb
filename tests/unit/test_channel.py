"""relay.core.channel: sequencing, resync, history, resume and snapshots of one channel."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from wsdecode import message, text_payload

from relay.core.book import Book
from relay.core.channel import (
    Applied,
    Channel,
    Kind,
    Replay,
    Resync,
    ResyncReason,
    parse_channel_name,
    replay_after,
)
from relay.core.checksum import book_checksum
from relay.core.entry import MalformedEntry, StreamEntry

BOOK = "book.BTC-USD"
TRADES = "trades.BTC-USD"
EPOCH = "e1"
SNAPSHOT_SEQ = 10
TS0 = 1_732_600_000_000_000

INITIAL: dict[str, Any] = {
    "bids": [["43100.5", "1.25"], ["43100.0", "2"]],
    "asks": [["43101.0", "0.5"], ["43101.5", "3.000"]],
}


def ts_of(seq: int) -> int:
    return TS0 + 1000 * seq


def entry(
    seq: int | bytes, data: bytes | dict[str, Any], traceparent: bytes | None = None
) -> StreamEntry:
    raw_seq = seq if isinstance(seq, bytes) else str(seq).encode()
    ts = str(ts_of(seq) if isinstance(seq, int) else TS0).encode()
    fields = {
        b"seq": raw_seq,
        b"ts": ts,
        b"data": data if isinstance(data, bytes) else orjson.dumps(data),
    }
    if traceparent is not None:
        fields[b"traceparent"] = traceparent
    return StreamEntry(f"1-{raw_seq.decode(errors='replace')}", fields)


def bid_diff(seq: int) -> dict[str, Any]:
    """A distinct, valid diff per seq: a new bid level below the book."""
    return {"bids": [[f"{43000 - seq}.0", f"0.{seq:04d}"]]}


def book_channel(history: int = 5) -> Channel:
    channel = Channel(BOOK, Kind.BOOK, history=history, trades_kept=0)
    channel.reset(epoch=EPOCH, seq=SNAPSHOT_SEQ, ts=ts_of(SNAPSHOT_SEQ), state=INITIAL)
    return channel


def feed(channel: Channel, first: int, last: int) -> list[bytes]:
    frames: list[bytes] = []
    for seq in range(first, last + 1):
        outcome = channel.apply(entry(seq, bid_diff(seq)))
        assert isinstance(outcome, Applied), outcome
        frames.append(outcome.frame)
    return frames


# -- channel names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("book.BTC-USD", Kind.BOOK),
        ("trades.ETH-USD", Kind.TRADES),
        ("book.a_b-C9", Kind.BOOK),
        ("book." + "X" * 40, Kind.BOOK),
    ],
)
def test_served_channel_names_parse_to_their_kind(name: str, kind: Kind) -> None:
    assert parse_channel_name(name) is kind


@pytest.mark.parametrize(
    "name",
    [
        "",
        "book",
        "book.",
        ".BTC-USD",
        "ticker.BTC-USD",
        "Book.BTC-USD",
        "book.BTC USD",
        "book.BTC/USD",
        "book.BTC-USD\n",
        "book.BTC.USD",
        "book.BTÇ",
        "book." + "X" * 41,
    ],
)
def test_other_channel_names_do_not_parse(name: str) -> None:
    assert parse_channel_name(name) is None


# -- applying entries --------------------------------------------------------------------


def test_a_new_channel_is_not_live_until_reset() -> None:
    channel = Channel(BOOK, Kind.BOOK, history=5, trades_kept=0)
    assert not channel.live
    channel.reset(epoch=EPOCH, seq=SNAPSHOT_SEQ, ts=ts_of(SNAPSHOT_SEQ), state=INITIAL)
    assert channel.live
    assert (channel.epoch, channel.seq, channel.ts) == (EPOCH, SNAPSHOT_SEQ, ts_of(SNAPSHOT_SEQ))
    assert channel.book == Book.from_payload(INITIAL)


def test_the_next_seq_is_applied() -> None:
    channel = book_channel()
    outcome = channel.apply(entry(11, {"bids": [["43100.5", "0"]], "asks": [["43100.75", "4"]]}))
    assert isinstance(outcome, Applied)
    assert outcome.entry.seq == 11
    assert outcome.entry.ts == ts_of(11)
    assert channel.live
    assert (channel.seq, channel.ts) == (11, ts_of(11))
    assert channel.book.bid_levels() == [("43100.0", "2")]
    assert channel.book.ask_levels() == [
        ("43100.75", "4"),
        ("43101.0", "0.5"),
        ("43101.5", "3.000"),
    ]


def test_the_update_frame_head_comes_before_the_producer_data_bytes() -> None:
    channel = book_channel()
    data = b'{ "asks" : [["43101.0", "0"]],  "bids": [], "u": "\\u00e9" }'
    outcome = channel.apply(entry(11, data))
    assert isinstance(outcome, Applied)
    payload = text_payload(outcome.frame)
    head = b'{"type":"update","channel":"book.BTC-USD","seq":11,"ts":%d,"checksum":%d,"data":' % (
        ts_of(11),
        book_checksum(channel.book),
    )
    assert payload == head + data + b"}"
    assert message(outcome.frame) == {
        "type": "update",
        "channel": BOOK,
        "seq": 11,
        "ts": ts_of(11),
        "checksum": book_checksum(channel.book),
        "data": {"asks": [["43101.0", "0"]], "bids": [], "u": "é"},
    }


def test_traceparent_is_carried_with_the_entry() -> None:
    channel = book_channel()
    trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    outcome = channel.apply(entry(11, bid_diff(11), traceparent=trace))
    assert isinstance(outcome, Applied)
    assert outcome.entry.traceparent == trace


@pytest.mark.parametrize(
    ("seq", "reason"),
    [
        (14, ResyncReason.GAP),
        (1000, ResyncReason.GAP),
        (11, ResyncReason.BACKWARDS),
        (0, ResyncReason.BACKWARDS),
        (12, ResyncReason.BACKWARDS),  # a duplicate of the last applied seq
    ],
)
def test_any_seq_but_the_next_one_asks_for_a_resync(seq: int, reason: ResyncReason) -> None:
    channel = book_channel()
    feed(channel, 11, 12)
    before = channel.book.copy()
    outcome = channel.apply(entry(seq, {"bids": [["1", "1"]]}))
    assert isinstance(outcome, Resync)
    assert outcome.reason is reason
    assert not channel.live
    assert (channel.seq, channel.ts) == (12, ts_of(12))
    assert channel.book == before
    assert [s for s, _ in channel.history] == [11, 12]


def ok_fields(**changes: bytes | None) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes | None] = {
        b"seq": b"11",
        b"ts": str(ts_of(11)).encode(),
        b"data": orjson.dumps(bid_diff(11)),
    }
    fields.update({k.encode(): v for k, v in changes.items()})
    return {k: v for k, v in fields.items() if v is not None}


MALFORMED: list[tuple[str, dict[bytes, bytes]]] = [
    ("missing seq", ok_fields(seq=None)),
    ("missing ts", ok_fields(ts=None)),
    ("missing data", ok_fields(data=None)),
    ("seq with plus sign", ok_fields(seq=b"+11")),
    ("seq with underscore", ok_fields(seq=b"1_1")),
    ("seq with spaces", ok_fields(seq=b" 11")),
    ("seq empty", ok_fields(seq=b"")),
    ("seq negative", ok_fields(seq=b"-11")),
    ("seq decimal point", ok_fields(seq=b"11.0")),
    ("seq not a number", ok_fields(seq=b"eleven")),
    ("ts with underscore", ok_fields(ts=b"1_732_600_000")),
    ("ts negative", ok_fields(ts=b"-1")),
    ("data not JSON", ok_fields(data=b'{"bids": [')),
    ("data not UTF-8", ok_fields(data=b'{"bids": [], "x": "\xff"}')),
    ("data a list", ok_fields(data=b"[]")),
    ("data a string", ok_fields(data=b'"bids"')),
    ("data null", ok_fields(data=b"null")),
    ("bad price", ok_fields(data=b'{"bids": [["abc", "1"]]}')),
    ("NaN size", ok_fields(data=b'{"asks": [["43101.0", "NaN"]]}')),
    (
        "short level after good ones",
        ok_fields(data=b'{"bids": [["43100.5", "0"]], "asks": [["1"]]}'),
    ),
    ("side not a list", ok_fields(data=b'{"bids": {"43100.5": "1"}}')),
]


@pytest.mark.parametrize("fields", [f for _, f in MALFORMED], ids=[name for name, _ in MALFORMED])
def test_a_malformed_entry_asks_for_a_resync_and_changes_nothing(
    fields: dict[bytes, bytes],
) -> None:
    channel = book_channel()
    history = list(channel.history)
    outcome = channel.apply(StreamEntry("1-11", fields))
    assert isinstance(outcome, Resync)
    assert outcome.reason is ResyncReason.MALFORMED
    assert not channel.live
    assert channel.seq == SNAPSHOT_SEQ
    assert channel.ts == ts_of(SNAPSHOT_SEQ)
    assert channel.book == Book.from_payload(INITIAL)
    assert list(channel.history) == history
    assert channel.resume(EPOCH, SNAPSHOT_SEQ) is None


def test_a_reset_after_a_resync_makes_the_channel_live_again() -> None:
    channel = book_channel()
    feed(channel, 11, 12)
    assert isinstance(channel.apply(entry(14, bid_diff(14))), Resync)
    channel.reset(epoch=EPOCH, seq=13, ts=ts_of(13), state={"bids": [["1", "1"]], "asks": []})
    assert channel.live
    assert channel.book.to_payload() == {"bids": [["1", "1"]], "asks": []}
    assert list(channel.history) == []
    feed(channel, 14, 14)
    assert channel.seq == 14


@pytest.mark.parametrize("state", [None, [], {"bids": "x"}, {"asks": [["NaN", "1"]]}])
def test_a_reset_from_a_bad_snapshot_raises_and_leaves_the_channel_not_live(state: Any) -> None:
    channel = book_channel()
    with pytest.raises(MalformedEntry):
        channel.reset(epoch=EPOCH, seq=20, ts=ts_of(20), state=state)
    assert not channel.live
    assert channel.resume(EPOCH, SNAPSHOT_SEQ) is None


# -- history and resume ------------------------------------------------------------------


def test_history_keeps_the_last_frames_contiguous() -> None:
    channel = book_channel(history=3)
    frames = feed(channel, 11, 16)
    assert [seq for seq, _ in channel.history] == [14, 15, 16]
    assert [frame for _, frame in channel.history] == frames[-3:]


def test_history_shorter_than_its_limit_holds_everything_since_the_reset() -> None:
    channel = book_channel(history=10)
    frames = feed(channel, 11, 14)
    assert [seq for seq, _ in channel.history] == [11, 12, 13, 14]
    assert [frame for _, frame in channel.history] == frames


def test_resume_at_the_live_seq_replays_nothing() -> None:
    channel = book_channel()
    feed(channel, 11, 13)
    assert channel.resume(EPOCH, 13) == Replay([])


def test_resume_at_the_snapshot_seq_right_after_a_reset_replays_nothing() -> None:
    assert book_channel().resume(EPOCH, SNAPSHOT_SEQ) == Replay([])


@pytest.mark.parametrize("after", [11, 12, 13, 14, 15])
def test_resume_within_history_replays_exactly_the_frames_after_seq(after: int) -> None:
    channel = book_channel(history=5)
    frames = feed(channel, 11, 16)  # history holds 12..16
    replay = channel.resume(EPOCH, after)
    assert replay is not None
    assert replay.frames == frames[after - 10 :]
    assert [message(f)["seq"] for f in replay.frames] == list(range(after + 1, 17))


@pytest.mark.parametrize(
    ("epoch", "seq"),
    [
        (EPOCH, 10),  # too old: 11 has left the history
        (EPOCH, 3),
        ("e2", 14),  # another epoch
        ("", 14),
        (EPOCH, 17),  # ahead of the channel
        (EPOCH, -1),
        (EPOCH, -5),
    ],
)
def test_resume_that_history_cannot_serve_gives_none(epoch: str, seq: int) -> None:
    channel = book_channel(history=5)
    feed(channel, 11, 16)
    assert channel.resume(epoch, seq) is None


def test_resume_on_a_channel_that_is_not_live_gives_none() -> None:
    channel = book_channel()
    feed(channel, 11, 13)
    channel.apply(entry(15, bid_diff(15)))
    assert channel.resume(EPOCH, 12) is None
    assert channel.resume(EPOCH, 13) is None


def test_resume_on_a_channel_marked_stale_gives_none() -> None:
    channel = book_channel()
    feed(channel, 11, 13)
    channel.mark_stale()
    assert channel.resume(EPOCH, 12) is None


def test_resume_before_the_snapshot_seq_of_a_fresh_channel_gives_none() -> None:
    channel = book_channel()
    assert channel.resume(EPOCH, SNAPSHOT_SEQ - 1) is None


def test_a_reset_forgets_the_history_of_the_previous_epoch() -> None:
    channel = book_channel()
    feed(channel, 11, 13)
    channel.reset(epoch="e2", seq=100, ts=ts_of(100), state=INITIAL)
    assert channel.resume(EPOCH, 12) is None
    assert channel.resume("e2", 12) is None
    assert channel.resume("e2", 100) == Replay([])
    frames = feed(channel, 101, 102)
    assert channel.resume("e2", 100) == Replay(frames)


def test_without_history_only_the_live_seq_resumes() -> None:
    channel = book_channel(history=0)
    feed(channel, 11, 12)
    assert channel.resume(EPOCH, 12) == Replay([])
    assert channel.resume(EPOCH, 11) is None


# -- snapshots ---------------------------------------------------------------------------


def test_the_book_snapshot_frame_has_its_head_first_and_the_book_best_first() -> None:
    channel = book_channel()
    frame = channel.snapshot()
    checksum = book_checksum(channel.book)
    head = (
        b'{"type":"snapshot","channel":"book.BTC-USD","epoch":"e1","seq":10,"ts":%d,'
        b'"checksum":%d,"data":' % (ts_of(10), checksum)
    )
    assert text_payload(frame).startswith(head)
    assert message(frame) == {
        "type": "snapshot",
        "channel": BOOK,
        "epoch": EPOCH,
        "seq": SNAPSHOT_SEQ,
        "ts": ts_of(SNAPSHOT_SEQ),
        "checksum": checksum,
        "data": INITIAL,
    }


def test_the_snapshot_follows_applied_updates() -> None:
    channel = book_channel()
    feed(channel, 11, 12)
    channel.apply(entry(13, {"bids": [["43100.5", "0"]], "asks": [["43100.75", "1.0"]]}))
    snap = message(channel.snapshot())
    assert snap["seq"] == 13
    assert snap["ts"] == ts_of(13)
    assert snap["data"] == {
        "bids": [["43100.0", "2"], ["42989.0", "0.0011"], ["42988.0", "0.0012"]],
        "asks": [["43100.75", "1.0"], ["43101.0", "0.5"], ["43101.5", "3.000"]],
    }


def test_a_snapshot_is_encoded_once_per_seq() -> None:
    channel = book_channel()
    first = channel.snapshot()
    assert channel.snapshot() == first
    assert channel.snapshot() == first
    assert channel.snapshots_encoded == 1

    feed(channel, 11, 11)
    second = channel.snapshot()
    assert second != first
    assert message(second)["seq"] == 11
    assert channel.snapshot() == second
    assert channel.snapshots_encoded == 2


def test_a_reset_at_the_same_seq_encodes_a_new_snapshot() -> None:
    channel = book_channel()
    channel.snapshot()
    other = {"bids": [["1.5", "1"]], "asks": [["2.5", "1"]]}
    channel.reset(epoch="e2", seq=SNAPSHOT_SEQ, ts=ts_of(SNAPSHOT_SEQ), state=other)
    snap = message(channel.snapshot())
    assert snap["epoch"] == "e2"
    assert snap["data"] == other
    assert channel.snapshots_encoded == 2


# -- trades ------------------------------------------------------------------------------


def trade(n: int) -> bytes:
    """Producer bytes with the producer's own spacing, to check they pass untouched."""
    return b'{"id": "%d", "price": "43100.50", "size": "0.0100", "side": "buy"}' % n


def trades_channel(kept: int, history: int = 5) -> Channel:
    channel = Channel(TRADES, Kind.TRADES, history=history, trades_kept=kept)
    channel.reset(epoch=EPOCH, seq=2, ts=ts_of(2), state=[trade(1), trade(2)])
    return channel


def test_a_trades_snapshot_holds_the_last_trades_as_the_producer_wrote_them() -> None:
    channel = trades_channel(kept=3)
    for seq in range(3, 6):
        outcome = channel.apply(entry(seq, trade(seq)))
        assert isinstance(outcome, Applied)
        assert text_payload(outcome.frame).endswith(b',"data":' + trade(seq) + b"}")
    frame = channel.snapshot()
    payload = text_payload(frame)
    head = b'{"type":"snapshot","channel":"trades.BTC-USD","epoch":"e1","seq":5,"ts":%d,"data":'
    assert payload == head % ts_of(5) + b'{"trades":[' + b",".join(map(trade, [3, 4, 5])) + b"]}}"
    assert message(frame)["data"] == {"trades": [orjson.loads(trade(n)) for n in (3, 4, 5)]}


def test_a_trades_snapshot_right_after_reset_holds_the_reset_state() -> None:
    snap = message(trades_channel(kept=3).snapshot())
    assert snap["seq"] == 2
    assert snap["data"] == {"trades": [orjson.loads(trade(1)), orjson.loads(trade(2))]}


def test_a_trades_channel_keeping_none_snapshots_an_empty_list() -> None:
    channel = trades_channel(kept=0)
    channel.apply(entry(3, trade(3)))
    assert message(channel.snapshot())["data"] == {"trades": []}


def test_a_trades_channel_resyncs_on_a_gap_and_on_bad_data() -> None:
    channel = trades_channel(kept=3)
    gap = channel.apply(entry(4, trade(4)))
    assert isinstance(gap, Resync)
    assert gap.reason is ResyncReason.GAP

    channel = trades_channel(kept=3)
    bad = channel.apply(entry(3, b'["not", "an", "object"]'))
    assert isinstance(bad, Resync)
    assert bad.reason is ResyncReason.MALFORMED
    assert message(channel.snapshot())["data"]["trades"] == [
        orjson.loads(trade(1)),
        orjson.loads(trade(2)),
    ]


# -- replay after a snapshot -------------------------------------------------------------


def test_replay_after_skips_what_the_snapshot_already_holds() -> None:
    channel = book_channel()
    # Entries 7..10 are already in the snapshot; applying them would be a BACKWARDS resync.
    entries = [entry(seq, {"bids": [["1", "1"]]}) for seq in range(7, 11)]
    entries += [entry(seq, bid_diff(seq)) for seq in range(11, 14)]
    assert replay_after(channel, SNAPSHOT_SEQ, entries) is None
    assert channel.live
    assert channel.seq == 13
    expected = Book.from_payload(INITIAL)
    for seq in range(11, 14):
        expected.apply(bid_diff(seq))
    assert channel.book == expected
    assert [seq for seq, _ in channel.history] == [11, 12, 13]


def test_replay_after_with_nothing_new_leaves_the_snapshot() -> None:
    channel = book_channel()
    assert replay_after(channel, SNAPSHOT_SEQ, [entry(SNAPSHOT_SEQ, {"bids": []})]) is None
    assert channel.live
    assert channel.book == Book.from_payload(INITIAL)


def test_replay_after_reports_a_gap() -> None:
    channel = book_channel()
    entries = [entry(11, bid_diff(11)), entry(13, bid_diff(13))]
    outcome = replay_after(channel, SNAPSHOT_SEQ, entries)
    assert isinstance(outcome, Resync)
    assert outcome.reason is ResyncReason.GAP
    assert not channel.live


@pytest.mark.parametrize("seq", [b"x", b"+11", b""])
def test_replay_after_reports_a_malformed_seq(seq: bytes) -> None:
    channel = book_channel()
    outcome = replay_after(channel, SNAPSHOT_SEQ, [entry(seq, bid_diff(11))])
    assert isinstance(outcome, Resync)
    assert outcome.reason is ResyncReason.MALFORMED
    assert channel.book == Book.from_payload(INITIAL)


def test_replay_after_trusts_a_snapshot_whose_own_entry_opens_the_stream() -> None:
    channel = book_channel()
    entries = [entry(seq, bid_diff(seq)) for seq in range(SNAPSHOT_SEQ, 13)]
    assert replay_after(channel, SNAPSHOT_SEQ, entries, snapshot_id=entries[0].id) is None
    assert channel.live
    assert channel.seq == 12


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([], id="stream empty"),
        pytest.param([entry(11, bid_diff(11))], id="snapshot entry trimmed"),
        pytest.param(
            [StreamEntry("1-10", {**entry(9, {}).fields}), entry(11, bid_diff(11))],
            id="snapshot id holds another seq",
        ),
        pytest.param(
            [StreamEntry("7-0", {**entry(10, {}).fields}), entry(11, bid_diff(11))],
            id="snapshot seq under another id",
        ),
    ],
)
def test_replay_after_distrusts_a_snapshot_that_does_not_fit_its_stream(
    entries: list[StreamEntry],
) -> None:
    channel = book_channel()
    outcome = replay_after(channel, SNAPSHOT_SEQ, entries, snapshot_id="1-10")
    assert isinstance(outcome, Resync)
    assert outcome.reason is ResyncReason.SOURCE
    assert not channel.live
    assert channel.seq == SNAPSHOT_SEQ


def test_an_update_that_crosses_the_book_is_never_sent() -> None:
    channel = book_channel()
    best_ask = channel.book.best_ask()
    assert best_ask is not None
    outcome = channel.apply(entry(11, {"bids": [[best_ask[0], "1"]], "asks": []}))
    assert isinstance(outcome, Resync)
    assert outcome.reason is ResyncReason.CROSSED
    assert "seq 11" in outcome.detail
    assert not channel.live
    assert channel.seq == SNAPSHOT_SEQ  # the crossed update did not become the channel's seq


def test_a_crossed_snapshot_is_refused() -> None:
    channel = Channel(BOOK, Kind.BOOK, history=10, trades_kept=0)
    with pytest.raises(MalformedEntry, match="crossed"):
        channel.reset(epoch="e", seq=1, ts=1, state={"bids": [["10", "1"]], "asks": [["9", "1"]]})
    assert not channel.live
