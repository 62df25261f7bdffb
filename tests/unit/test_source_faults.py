"""Fault handling without a Redis: which errors the source retries, and the simulator's
answer to a store that lost what it had acknowledged (docs/faults.md)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError

from relay.core.book import Book
from relay.producer import MemoryPublisher, Publication, Simulator
from relay.source.base import SourceUnavailable, meta_key, snapshot_key, stream_key
from relay.source.memory import MemoryStore
from relay.source.redis import guard


@pytest.mark.parametrize(
    "error",
    [
        BusyLoadingError("Redis is loading the dataset in memory"),
        ReadOnlyError("You can't write against a read only replica."),
        ResponseError("UNBLOCKED force unblock from blocking operation, instance state changed"),
        ResponseError("MASTERDOWN Link with MASTER is down"),
        ConnectionRefusedError(111, "refused"),
    ],
)
async def test_transient_errors_become_source_unavailable(error: Exception) -> None:
    async def fail() -> None:
        raise error

    with pytest.raises(SourceUnavailable):
        await guard(fail)


async def test_other_errors_are_not_retried() -> None:
    async def fail() -> None:
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    with pytest.raises(ResponseError):
        await guard(fail)


class FlakyPublisher(MemoryPublisher):
    """A memory store whose next write fails after the store lost everything: a Redis
    restarted without persistence between two writes."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.wipe_before_next = False

    async def publish(self, items: Sequence[Publication]) -> None:
        if self.wipe_before_next:
            self.wipe_before_next = False
            self.store.delete(*self.store.stream_keys())
            for channel in ("book.BTC-USD", "trades.BTC-USD"):
                self.store.delete(
                    meta_key(self.prefix, channel), snapshot_key(self.prefix, channel)
                )
            raise SourceUnavailable("ConnectionError: Connection closed by server.")
        await super().publish(items)


async def test_the_simulator_opens_a_new_epoch_when_the_store_lost_its_entries() -> None:
    store = MemoryStore()
    publisher = FlakyPublisher(store)
    sim = Simulator(publisher, symbols=1, rate=1000.0, seed=3)
    await sim.start()
    await sim.run(steps=20, tick=0.001)
    old = sim.epoch
    publisher.wipe_before_next = True
    await sim.run(steps=5, tick=0.001)
    assert sim.epoch != old
    assert sim.epochs_opened == 1
    book = stream_key("md:", "book.BTC-USD")
    assert store.hgetall(meta_key("md:", "book.BTC-USD")) == {b"epoch": sim.epoch.encode()}
    entries = store.stream(book)
    seqs = [int(entry.fields[b"seq"]) for entry in entries]
    assert seqs == list(range(1, len(seqs) + 1))  # the new epoch counts from 1, no hole
    assert seqs[-1] == sim.seqs["book.BTC-USD"]
    # Seq 1 is the whole book, and the snapshot hash points at it (or at a later entry).
    first = Book.from_payload(orjson.loads(entries[0].fields[b"data"]))
    assert first.bids
    assert store.hgetall(snapshot_key("md:", "book.BTC-USD"))[b"id"]


async def test_a_partly_applied_write_is_not_taken_for_a_loss() -> None:
    """The write failed but the server ran it: the retry writes nothing twice and keeps
    the epoch."""
    store = MemoryStore()

    class AppliedThenFailed(MemoryPublisher):
        fail_once = False

        async def publish(self, items: Sequence[Publication]) -> None:
            await super().publish(items)
            if self.fail_once:
                self.fail_once = False
                raise SourceUnavailable("TimeoutError: reply lost")

    publisher = AppliedThenFailed(store)
    sim = Simulator(publisher, symbols=1, rate=1000.0, seed=4)
    await sim.start()
    await sim.run(steps=10, tick=0.001)
    epoch = sim.epoch
    publisher.fail_once = True
    await sim.run(steps=10, tick=0.001)
    assert sim.epoch == epoch
    seqs = [int(e.fields[b"seq"]) for e in store.stream(stream_key("md:", "book.BTC-USD"))]
    assert seqs == list(range(1, sim.seqs["book.BTC-USD"] + 1))
