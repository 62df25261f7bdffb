"""The pure session: requests, replies, resyncs, resumes, errors and pacing, with no I/O.

A ``Link`` joins a ``Session`` to a ``FakeRelay`` by hand: the test decides which frames
arrive, which get lost or altered, and when time passes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from client.fakes import FakeRelay, dumps, error, update_frame
from relay.client import (
    BookSnapshot,
    BookUpdate,
    ChannelError,
    ChannelStatus,
    Event,
    Session,
    StatusChanged,
    TradesSnapshot,
    TradeUpdate,
)

BOOK = "book.X"
TRADES = "trades.X"


class Link:
    def __init__(self, relay: FakeRelay, session: Session | None = None) -> None:
        self.relay = relay
        self.session = session or Session(rng=random.Random(1))
        self.now = 100.0
        # Called with each frame's events as it is applied (a later frame changes the
        # book those events hold, as the client's lockstep delivery never lets happen).
        self.observer: Callable[[list[Event]], None] | None = None

    def connect(self) -> list[Event]:
        self.relay.disconnect()
        return self.session.connection_made(self.now)

    def requests(self) -> list[dict[str, Any]]:
        return self.session.take_requests(self.now)

    def feed(self, *frames: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        for frame in frames:
            step = self.session.receive(dumps(frame), self.now, 0)
            if self.observer is not None:
                self.observer(step)
            events += step
        return events

    def exchange(self) -> list[Event]:
        """Send what is due; the relay answers every request at once."""
        return self.feed(*(f for r in self.requests() for f in self.relay.answer(r)))

    def settle(self) -> list[Event]:
        """Exchange until nothing is due, letting time pass for delayed retries."""
        events: list[Event] = []
        for _ in range(50):
            deadline = self.session.next_deadline()
            if deadline is None:
                return events
            self.now = max(self.now, deadline)
            events += self.exchange()
        raise AssertionError("the session never settled")

    def deliver(self, name: str) -> list[Event]:
        """The producer moves on and the relay sends the update, if subscribed."""
        frame = self.relay.step(name)
        return self.feed(frame) if name in self.relay.subscribed else []


def status(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.channel, e.status.value, e.reason) for e in events if isinstance(e, StatusChanged)]


def live_link(*channels: str, **relay_options: Any) -> Link:
    link = Link(FakeRelay(list(channels), **relay_options))
    for name in channels:
        link.session.add(name, link.now)
    link.connect()
    link.settle()
    return link


def test_subscribing_makes_every_channel_live_from_its_snapshot() -> None:
    link = Link(FakeRelay([BOOK, TRADES]))
    session = link.session
    session.add(BOOK, link.now)
    session.add(TRADES, link.now)
    assert session.take_requests(link.now) == []  # not connected yet
    assert link.connect() == []
    requests = link.requests()
    assert requests == [
        {"op": "subscribe", "channel": BOOK, "id": 1},
        {"op": "subscribe", "channel": TRADES, "id": 2},
    ]
    events = link.feed(*(f for r in requests for f in link.relay.answer(r)))
    assert status(events) == [(BOOK, "live", "snapshot"), (TRADES, "live", "snapshot")]
    assert [type(e) for e in events if not isinstance(e, StatusChanged)] == [
        BookSnapshot,
        TradesSnapshot,
    ]
    assert session.settled()
    assert session.next_deadline() is None


def test_requests_are_paced_under_the_relays_rate_limit() -> None:
    session = Session(request_rate=10.0, request_burst=20.0)
    for n in range(50):
        session.add(f"book.S{n}", 0.0)
    session.connection_made(0.0)
    assert len(session.take_requests(0.0)) == 20
    assert session.take_requests(0.0) == []
    deadline = session.next_deadline()
    assert deadline is not None
    assert 0.0 < deadline <= 0.1
    assert len(session.take_requests(1.0)) == 10
    assert len(session.take_requests(3.0)) == 20
    assert session.next_deadline() is None


def test_a_gap_drops_the_state_and_the_frames_until_a_fresh_snapshot() -> None:
    link = live_link(BOOK)
    session = link.session
    link.deliver(BOOK)
    link.relay.step(BOOK)  # lost
    events = link.deliver(BOOK)
    assert status(events) == [(BOOK, "resyncing", "gap")]
    assert not any(isinstance(e, BookUpdate) for e in events)
    state = session.state(BOOK)
    assert state is not None
    assert (state.book, state.position) == (None, None)
    [unsubscribe] = link.requests()
    assert unsubscribe == {"op": "unsubscribe", "channel": BOOK, "id": 2}
    # Updates still in flight from the old subscription are not applied, nor handed out.
    assert link.deliver(BOOK) == []
    assert link.feed(*link.relay.answer(unsubscribe)) == []
    [subscribe] = link.requests()
    assert subscribe == {"op": "subscribe", "channel": BOOK, "id": 3}  # no resume: no state
    events = link.feed(*link.relay.answer(subscribe))
    assert status(events) == [(BOOK, "live", "snapshot")]
    [snapshot] = [e for e in events if isinstance(e, BookSnapshot)]
    assert snapshot.book.to_book() == link.relay.channels[BOOK].book
    [update] = link.deliver(BOOK)
    assert isinstance(update, BookUpdate)
    assert update.seq == snapshot.seq + 1
    counters = state.counters
    assert (counters.gaps, counters.resubscribes, counters.snapshots) == (1, 1, 2)


def test_failures_in_a_row_space_out_the_resubscribes() -> None:
    link = live_link(BOOK)
    frame = link.relay.step(BOOK)
    link.feed({**frame, "checksum": 0})
    assert link.session.next_deadline() == link.now  # the first resync goes at once
    link.settle()
    # The fresh snapshot is applied but the very next update fails again.
    frame = link.relay.step(BOOK)
    events = link.feed({**frame, "checksum": 0})
    assert status(events) == [(BOOK, "resyncing", "checksum")]
    deadline = link.session.next_deadline()
    assert deadline is not None
    assert link.requests() == []  # not yet
    assert deadline > link.now
    # Meanwhile the old subscription still sends: none of it is applied, not even a
    # snapshot, since the subscription is about to be replaced.
    assert link.deliver(BOOK) == []
    assert link.feed(link.relay.snapshot(BOOK)) == []
    link.settle()
    state = link.session.state(BOOK)
    assert state is not None
    assert state.status is ChannelStatus.LIVE
    assert state.counters.checksum_failures == 2


def test_a_reconnect_resumes_from_the_last_applied_seq_and_replays() -> None:
    link = live_link(BOOK, TRADES)
    for _ in range(3):
        link.deliver(BOOK)
        link.deliver(TRADES)
    events = link.session.connection_lost(1006)
    assert status(events) == [
        (BOOK, "reconnecting", "disconnected"),
        (TRADES, "reconnecting", "disconnected"),
    ]
    link.relay.disconnect()
    for _ in range(4):  # missed while away
        link.deliver(BOOK)
        link.deliver(TRADES)
    assert link.connect() == []
    requests = link.requests()
    assert [r["resume"] for r in requests] == [{"epoch": "e1", "seq": 8}, {"epoch": "e1", "seq": 8}]
    events = link.feed(*(f for r in requests for f in link.relay.answer(r)))
    assert status(events) == [(BOOK, "live", "resumed"), (TRADES, "live", "resumed")]
    assert [(type(e), e.seq) for e in events if isinstance(e, BookUpdate | TradeUpdate)] == [
        (BookUpdate, s) for s in range(9, 13)
    ] + [(TradeUpdate, s) for s in range(9, 13)]
    book = link.session.state(BOOK)
    assert book is not None
    assert book.book is not None
    assert book.book.to_book() == link.relay.channels[BOOK].book
    counters = book.counters
    assert (counters.reconnects, counters.resumes_replayed, counters.snapshots) == (1, 1, 1)


def test_a_resume_the_relay_cannot_replay_gets_a_snapshot() -> None:
    link = live_link(BOOK, history=2)
    link.session.connection_lost(4000)
    for _ in range(5):
        link.relay.step(BOOK)
    link.connect()
    events = link.exchange()
    assert status(events) == [(BOOK, "live", "snapshot")]
    [snapshot] = [e for e in events if isinstance(e, BookSnapshot)]
    assert snapshot.seq == 10
    state = link.session.state(BOOK)
    assert state is not None
    assert (state.counters.resumes_snapshot, state.counters.resumes_replayed) == (1, 0)
    assert link.session.stats.close_codes == {4000: 1}


def test_a_resume_answered_at_another_position_is_not_trusted() -> None:
    link = live_link(BOOK)
    link.session.connection_lost(1001)
    link.connect()
    [request] = link.requests()
    answer = {"type": "subscribed", "id": request["id"], "channel": BOOK}
    events = link.feed(answer | {"epoch": "e1", "seq": 4, "resumed": True})
    assert status(events) == [(BOOK, "resyncing", "resume_mismatch")]
    link.relay.subscribed.add(BOOK)
    link.settle()
    state = link.session.state(BOOK)
    assert state is not None
    assert state.status is ChannelStatus.LIVE


def test_an_unknown_channel_is_asked_for_again_later() -> None:
    link = Link(FakeRelay([BOOK]))
    link.session.add("book.LATER", link.now)
    link.connect()
    events = link.exchange()
    assert events == [ChannelError("book.LATER", "unknown_channel", "unknown_channel")]
    assert link.session.state("book.LATER") is not None
    deadline = link.session.next_deadline()
    assert deadline is not None
    assert deadline >= link.now
    state = link.session.state("book.LATER")
    assert state is not None
    assert state.status is ChannelStatus.SUBSCRIBING
    link.now = deadline
    [again] = link.requests()
    assert again["op"] == "subscribe"
    assert state.counters.errors == 1


def test_a_refused_subscription_fails_until_the_next_connection() -> None:
    link = Link(FakeRelay([BOOK]))
    link.session.add(BOOK, link.now)
    link.connect()
    [request] = link.requests()
    events = link.feed(error(request["id"], "too_many_subscriptions", "at most 1"))
    assert events[0] == ChannelError(BOOK, "too_many_subscriptions", "at most 1")
    assert status(events) == [(BOOK, "failed", "too_many_subscriptions")]
    assert link.session.next_deadline() is None
    assert link.session.settled()
    link.session.connection_lost(1006)
    assert status(link.connect()) == [(BOOK, "subscribing", "reconnected")]
    assert status(link.exchange()) == [(BOOK, "live", "snapshot")]


def test_a_rate_limited_request_is_sent_again_later() -> None:
    link = Link(FakeRelay([BOOK]))
    link.session.add(BOOK, link.now)
    link.connect()
    [request] = link.requests()
    link.feed(error(request["id"], "rate_limited"))
    deadline = link.session.next_deadline()
    assert deadline is not None
    link.now = deadline
    [again] = link.requests()
    assert again == {"op": "subscribe", "channel": BOOK, "id": request["id"] + 1}


def test_a_subscription_the_relay_already_holds_is_replaced() -> None:
    link = Link(FakeRelay([BOOK]))
    link.session.add(BOOK, link.now)
    link.connect()
    link.relay.subscribed.add(BOOK)  # say, a subscribe whose answer we never saw
    events = link.exchange()
    assert [e.code for e in events if isinstance(e, ChannelError)] == ["already_subscribed"]
    assert status(events) == [(BOOK, "resyncing", "relay_state")]
    [unsubscribe] = link.requests()
    assert unsubscribe["op"] == "unsubscribe"
    link.feed(*link.relay.answer(unsubscribe))
    assert status(link.exchange()) == [(BOOK, "live", "snapshot")]


def test_unsubscribe_drops_the_state_and_the_frames_at_once() -> None:
    link = live_link(BOOK, TRADES)
    link.session.remove(BOOK, link.now)
    assert link.session.channels() == [TRADES]
    assert link.session.state(BOOK) is None
    assert link.deliver(BOOK) == []
    [request] = link.requests()
    assert request["op"] == "unsubscribe"
    assert link.feed(*link.relay.answer(request)) == []
    assert BOOK not in link.relay.subscribed
    assert link.session.next_deadline() is None
    # And back again, from scratch.
    link.session.add(BOOK, link.now)
    assert status(link.exchange()) == [(BOOK, "live", "snapshot")]


def test_unsubscribing_while_the_subscribe_is_in_flight_leaves_when_it_lands() -> None:
    link = Link(FakeRelay([BOOK]))
    link.session.add(BOOK, link.now)
    link.connect()
    [request] = link.requests()
    link.session.remove(BOOK, link.now)
    assert link.requests() == []  # nothing while the subscribe is in flight
    assert link.feed(*link.relay.answer(request)) == []
    [leave] = link.requests()
    assert leave["op"] == "unsubscribe"
    link.feed(*link.relay.answer(leave))
    assert link.relay.subscribed == set()


def test_what_is_not_ours_is_ignored() -> None:
    link = live_link(BOOK)
    session = link.session
    assert session.receive(b"not json", link.now, 0) == []
    assert session.receive(b"[1, 2]", link.now, 0) == []
    assert session.stats.bad_frames == 2
    assert link.feed({"type": "pong", "id": 9}, {"type": "hello"}) == []
    assert link.feed(update_frame("book.OTHER", 1, {"bids": []})) == []
    assert link.feed({"type": "update", "channel": ["x"], "seq": 1}) == []
    assert link.feed({"type": "subscribed", "id": 77, "channel": BOOK}) == []
    assert link.feed(error(None, "invalid_json")) == [
        ChannelError(None, "invalid_json", "invalid_json")
    ]
    state = session.state(BOOK)
    assert state is not None
    assert state.status is ChannelStatus.LIVE


def test_invalid_channel_names_are_refused_before_anything_is_sent() -> None:
    session = Session()
    for name in ("candles.X", "book", "book.has space", ""):
        try:
            session.add(name, 0.0)
        except ValueError:
            continue
        raise AssertionError(f"{name!r} was accepted")
    assert session.channels() == []


FAULTS = st.sampled_from(["ok", "ok", "ok", "drop", "dup", "corrupt", "snapshot", "reconnect"])


@settings(max_examples=150, deadline=None)
@given(faults=st.lists(st.tuples(st.sampled_from([BOOK, TRADES]), FAULTS), max_size=40))
def test_whatever_the_network_does_the_user_sees_only_in_order_verified_state(
    faults: list[tuple[str, str]],
) -> None:
    link = live_link(BOOK, TRADES, history=5)
    relay = link.relay
    delivered: dict[str, int | None] = {BOOK: relay.channels[BOOK].seq, TRADES: 5}

    def check(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, StatusChanged) and event.status is ChannelStatus.RESYNCING:
                delivered[event.channel] = None  # nothing more until a snapshot
            elif isinstance(event, BookSnapshot | TradesSnapshot):
                delivered[event.channel] = event.seq
            elif isinstance(event, BookUpdate | TradeUpdate):
                last = delivered[event.channel]
                assert last is not None, "an update with no state under it"
                assert event.seq == last + 1, "an update out of order"
                delivered[event.channel] = event.seq
                if isinstance(event, BookUpdate):
                    assert event.book.to_book() == relay.channels[BOOK].books[event.seq]
            if isinstance(event, BookSnapshot):
                assert event.book.to_book() == relay.channels[BOOK].books[event.seq]

    link.observer = check
    for name, fault in faults:
        frame = relay.step(name)
        subscribed = name in relay.subscribed
        if fault == "reconnect":
            check(link.session.connection_lost(1006))
            check(link.connect())
        elif not subscribed or fault == "drop":
            pass
        elif fault == "ok":
            link.feed(frame)
        elif fault == "dup":
            link.feed(frame, frame)
        elif fault == "corrupt" and name == BOOK:
            link.feed({**frame, "checksum": frame["checksum"] ^ 1})
        elif fault == "corrupt":
            link.feed({**frame, "seq": frame["seq"] + 1})
        else:  # the relay rebuilt the channel and sends a fresh snapshot (rule 4)
            link.feed(frame, relay.snapshot(name))
        link.settle()
    # A last update for each channel shows every gap; then everything is caught up.
    for name in (BOOK, TRADES):
        link.deliver(name)
        link.settle()
    for name in (BOOK, TRADES):
        state = link.session.state(name)
        assert state is not None
        assert state.status is ChannelStatus.LIVE
        assert state.position == ("e1", relay.channels[name].seq)
    book = link.session.state(BOOK)
    assert book is not None
    assert book.book is not None
    assert book.book.to_book() == relay.channels[BOOK].book
