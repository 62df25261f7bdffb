// The local book and one channel's state machine, on hand-made frames and on whole streams
// encoded by the relay's Python implementation (vectors.json).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Book, BookError, ChannelState, ChannelStatus, compareDecimal } from "../../../relay/static/relay-client.js";
import { BOOK, VECTORS } from "./helpers.mjs";

test("levels are kept best first, with the producer's strings", () => {
  const book = Book.fromPayload({ bids: [["99", "1"], ["100.5", "2"], ["9", "3"]], asks: [["102", "1"], ["101.25", "4"]] });
  assert.deepEqual(book.bids(), [["100.5", "2"], ["99", "1"], ["9", "3"]]);
  assert.deepEqual(book.asks(), [["101.25", "4"], ["102", "1"]]);
  assert.deepEqual(book.bids(2), [["100.5", "2"], ["99", "1"]]);
  assert.deepEqual(book.bestBid(), ["100.5", "2"]);
  assert.deepEqual(book.bestAsk(), ["101.25", "4"]);
  assert.equal(book.spread(), 0.75);
  assert.equal(book.mid(), 100.875);
  assert.equal(book.bidCount, 3);
  assert.equal(book.askCount, 2);
  assert.equal(book.isCrossed(), false);
});

test("a zero size removes the level; levels are keyed by value", () => {
  const book = Book.fromPayload(BOOK);
  book.apply({ bids: [["100.50", "7"], ["99.5", "0.000"]], asks: [["0101", "0"]] });
  assert.deepEqual(book.toPayload(), { bids: [["100.50", "7"], ["100.0", "3"]], asks: [["101.5", "0.5"]] });
  book.apply({ bids: [["1", "0"]] }); // removing a level that is not there is a no-op
  assert.equal(book.bidCount, 2);
});

test("a malformed diff changes nothing", () => {
  const book = Book.fromPayload(BOOK);
  const before = book.toPayload();
  for (const bad of [
    { bids: [["100", "1"], ["101", "-1"]] },
    { bids: [["1e3", "1"]] },
    { asks: [[100, "1"]] },
    { asks: [["100"]] },
    { asks: [["NaN", "1"]] },
    { asks: [["١٠٠", "1"]] },
    { bids: "nope" },
  ]) {
    assert.throws(() => book.apply(bad), BookError, JSON.stringify(bad));
    assert.deepEqual(book.toPayload(), before);
  }
  assert.throws(() => book.apply([]), BookError);
  assert.throws(() => book.apply(null), BookError);
});

test("decimals compare by value, exactly", () => {
  assert.equal(compareDecimal("9", "10"), -1);
  assert.equal(compareDecimal("0.5", "0.49"), 1);
  assert.equal(compareDecimal("0.5", "0.51"), -1);
  assert.equal(compareDecimal("100.5", "100.5"), 0);
  assert.equal(compareDecimal("12345678901234567890.1", "12345678901234567890.01"), 1);
  assert.ok(Book.fromPayload({ bids: [["0.30000000000000001", "1"], ["0.3", "1"]] }).bidCount === 2);
});

function snapshotFrame(overrides = {}) {
  return { type: "snapshot", channel: "book.X", epoch: "e1", seq: 10, ts: 5_000_000, data: BOOK, checksum: 1158620720, ...overrides };
}

test("snapshot then updates in order, each verified", () => {
  const state = new ChannelState("book.X", "book");
  const first = state.snapshot(snapshotFrame(), 5_000_100);
  assert.equal(first.resync, null);
  assert.deepEqual(first.events.map((e) => e.type), ["statusChanged", "bookSnapshot"]);
  assert.equal(first.events[0].reason, "snapshot");
  assert.equal(state.status, ChannelStatus.LIVE);
  const diff = { bids: [["100.5", "0"]], asks: [] };
  const next = Book.fromPayload(BOOK);
  next.apply(diff);
  const step = state.update({ type: "update", channel: "book.X", seq: 11, ts: 5_000_200, checksum: next.checksum(), data: diff }, 5_001_200);
  assert.equal(step.resync, null);
  assert.equal(step.events[0].type, "bookUpdate");
  assert.equal(step.events[0].latencyUs, 1000);
  assert.deepEqual(state.position, ["e1", 11]);
  assert.equal(state.counters.checksumsVerified, 2);
  assert.equal(state.counters.updates, 1);
});

test("duplicates are ignored, gaps and bad checksums resync", () => {
  const state = new ChannelState("book.X", "book");
  state.snapshot(snapshotFrame(), 0);
  assert.deepEqual(state.update({ seq: 10, ts: 1, data: {} }, 0), { events: [], resync: null });
  assert.equal(state.counters.duplicates, 1);
  assert.equal(state.update({ seq: 12, ts: 1, data: {} }, 0).resync, "gap");
  assert.equal(state.counters.gaps, 1);
  assert.equal(state.update({ seq: 11, ts: 1, checksum: 1, data: { bids: [["1", "1"]] } }, 0).resync, "checksum");
  assert.equal(state.counters.checksumFailures, 1);
  assert.equal(state.snapshot(snapshotFrame({ checksum: 7 }), 0).resync, "checksum");
  assert.equal(state.snapshot(snapshotFrame({ checksum: "x" }), 0).resync, "malformed");
  assert.equal(state.snapshot(snapshotFrame({ data: { bids: [["a", "1"]] } }), 0).resync, "malformed");
});

test("an update with no snapshot under it is a resync", () => {
  const state = new ChannelState("book.X", "book");
  assert.equal(state.update({ seq: 1, ts: 1, data: {} }, 0).resync, "no_snapshot");
});

test("checksum depth 0 does not verify", () => {
  const state = new ChannelState("book.X", "book", { checksumDepth: 0 });
  assert.equal(state.snapshot(snapshotFrame({ checksum: 7 }), 0).resync, null);
  assert.equal(state.counters.checksumsVerified, 0);
});

test("trades: the snapshot replaces, updates append, the last tradesKept are kept", () => {
  const state = new ChannelState("trades.X", "trades", { tradesKept: 3 });
  const trades = [1, 2, 3, 4].map((i) => ({ id: String(i), price: "100", size: "1", side: "buy", venue: "x" }));
  const snap = state.snapshot({ type: "snapshot", channel: "trades.X", epoch: "e", seq: 4, ts: 1, data: { trades } }, 2);
  assert.equal(snap.events[1].type, "tradesSnapshot");
  assert.deepEqual(state.trades.map((t) => t.id), ["2", "3", "4"]);
  const step = state.update({ seq: 5, ts: 3, data: { id: "5", price: "101", size: "0.5", side: "sell", extra: 1 } }, 4);
  assert.equal(step.events[0].type, "tradeUpdate");
  assert.deepEqual(step.events[0].trade, { id: "5", price: "101", size: "0.5", side: "sell", data: { id: "5", price: "101", size: "0.5", side: "sell", extra: 1 } });
  assert.deepEqual(state.trades.map((t) => t.id), ["3", "4", "5"]);
});

test("whole streams encoded by the relay verify at every seq", () => {
  assert.ok(VECTORS.streams.length >= 3);
  for (const stream of VECTORS.streams) {
    const state = new ChannelState(stream.channel, "book");
    let checked = 0;
    for (const text of stream.frames) {
      const frame = JSON.parse(text);
      const step = frame.type === "snapshot" ? state.snapshot(frame, 0) : state.update(frame, 0);
      assert.equal(step.resync, null, `${stream.channel} seq ${frame.seq}`);
      const event = step.events[step.events.length - 1];
      assert.equal(event.checksum, frame.checksum);
      assert.equal(event.book.checksum(), frame.checksum);
      checked += 1;
    }
    assert.equal(state.counters.checksumsVerified, checked);
    assert.equal(state.counters.checksumFailures, 0);
    assert.deepEqual(state.book.toPayload(), stream.final, stream.channel);
  }
});

test("a tampered stream fails its checksum at the tampered seq", () => {
  const stream = VECTORS.streams[0];
  const state = new ChannelState(stream.channel, "book");
  const frames = stream.frames.map((t) => JSON.parse(t));
  const victim = frames.findIndex((f, i) => i > 5 && f.data.bids.length > 0 && f.data.bids[0][1] !== "0");
  frames[victim].data.bids[0][1] = frames[victim].data.bids[0][1] + "1";
  for (let i = 0; i < frames.length; i++) {
    const step = i === 0 ? state.snapshot(frames[i], 0) : state.update(frames[i], 0);
    if (i < victim) assert.equal(step.resync, null);
    else {
      assert.equal(step.resync, "checksum");
      break;
    }
  }
});
