// Session: the protocol for many channels as a pure state machine (time and randomness injected).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Book, ChannelStatus, Session } from "../../../relay/static/relay-client.js";
import { BOOK } from "./helpers.mjs";

const CHECKSUM = 1158620720;

function live(session, name = "book.X", now = 0, seq = 10) {
  const [request] = session.takeRequests(now).filter((r) => r.channel === name);
  session.receive(JSON.stringify({ type: "subscribed", id: request.id, channel: name, epoch: "e1", seq }), now, 0);
  const events = session.receive(
    JSON.stringify({ type: "snapshot", channel: name, epoch: "e1", seq, ts: 1, checksum: CHECKSUM, data: BOOK }),
    now,
    0,
  );
  return { request, events };
}

function update(seq, diff = { bids: [["1", "1"]], asks: [] }, base = BOOK) {
  const book = Book.fromPayload(base);
  book.apply(diff);
  return { frame: { type: "update", channel: "book.X", seq, ts: 2, checksum: book.checksum(), data: diff }, book };
}

test("invalid channel names are refused", () => {
  const session = new Session();
  for (const bad of ["candles.BTC", "book", "book.", "book.a b", 7]) assert.throws(() => session.add(bad, 0), TypeError);
});

test("subscribes every channel once connected; snapshots make them live", () => {
  const session = new Session();
  session.add("book.X", 0);
  session.add("trades.X", 0);
  assert.deepEqual(session.takeRequests(0), []); // not connected yet
  session.connectionMade(0);
  const { request, events } = live(session);
  assert.deepEqual(request, { op: "subscribe", channel: "book.X", id: request.id });
  assert.deepEqual(events.map((e) => e.type), ["statusChanged", "bookSnapshot"]);
  assert.equal(session.settled(), false); // trades.X has not been answered
  assert.equal(session.state("book.X").status, ChannelStatus.LIVE);
});

test("a gap replaces the subscription: unsubscribe, then subscribe; stale frames are dropped", () => {
  const session = new Session();
  session.add("book.X", 0);
  session.connectionMade(0);
  live(session);
  const events = session.receive(JSON.stringify(update(12).frame), 1, 0);
  assert.deepEqual(events, [{ type: "statusChanged", channel: "book.X", status: "resyncing", previous: "live", reason: "gap" }]);
  const [unsub] = session.takeRequests(1);
  assert.equal(unsub.op, "unsubscribe");
  // an update still in flight from the old subscription is not applied
  assert.deepEqual(session.receive(JSON.stringify(update(13).frame), 1, 0), []);
  session.receive(JSON.stringify({ type: "unsubscribed", id: unsub.id, channel: "book.X" }), 1, 0);
  const [sub] = session.takeRequests(1);
  assert.equal(sub.op, "subscribe");
  assert.equal(sub.resume, undefined, "the state was discarded: a plain subscribe");
  const state = session.state("book.X");
  assert.equal(state.counters.gaps, 1);
  assert.equal(state.counters.resubscribes, 1);
});

test("resyncs in a row are spaced out with full jitter", () => {
  const session = new Session({ random: () => 1, retryBase: 0.5, retryMax: 10 });
  session.add("book.X", 0);
  session.connectionMade(0);
  let now = 0;
  for (let round = 0; round < 4; round++) {
    const [request] = session.takeRequests(now);
    assert.equal(request.op, "subscribe");
    session.receive(JSON.stringify({ type: "subscribed", id: request.id, channel: "book.X", epoch: "e1", seq: 10 }), now, 0);
    // a snapshot that fails its checksum, again and again
    session.receive(JSON.stringify({ type: "snapshot", channel: "book.X", epoch: "e1", seq: 10, ts: 1, checksum: 1, data: BOOK }), now, 0);
    const expected = round === 0 ? 0 : Math.min(10, 0.5 * 2 ** (round - 1));
    assert.equal(session.nextDeadline(), now + expected);
    now += expected;
    const [unsub] = session.takeRequests(now);
    assert.equal(unsub.op, "unsubscribe");
    session.receive(JSON.stringify({ type: "unsubscribed", id: unsub.id, channel: "book.X" }), now, 0);
  }
  assert.equal(session.state("book.X").counters.checksumFailures, 4);
});

test("a reconnect resumes from {epoch, seq}; replayed updates apply", () => {
  const session = new Session();
  session.add("book.X", 0);
  session.connectionMade(0);
  live(session);
  const { frame, book } = update(11);
  session.receive(JSON.stringify(frame), 0, 0);
  const lost = session.connectionLost(1001);
  assert.deepEqual(lost.map((e) => [e.status, e.reason]), [["reconnecting", "disconnected"]]);
  assert.deepEqual(session.stats.closeCodes, { 1001: 1 });
  session.connectionMade(5);
  const [request] = session.takeRequests(5);
  assert.deepEqual(request.resume, { epoch: "e1", seq: 11 });
  const events = session.receive(
    JSON.stringify({ type: "subscribed", id: request.id, channel: "book.X", epoch: "e1", seq: 11, resumed: true }),
    5,
    0,
  );
  assert.deepEqual(events.map((e) => [e.status, e.reason]), [["live", "resumed"]]);
  const diff = { bids: [], asks: [["101.5", "0"]] };
  const next = update(12, diff, book.toPayload()).frame;
  assert.equal(session.receive(JSON.stringify(next), 5, 0)[0].type, "bookUpdate");
  const counters = session.state("book.X").counters;
  assert.equal(counters.resumesReplayed, 1);
  assert.equal(counters.reconnects, 1);
});

test("a resume answered with a snapshot replaces the state", () => {
  const session = new Session();
  session.add("book.X", 0);
  session.connectionMade(0);
  live(session);
  session.connectionLost(1006);
  session.connectionMade(1);
  const [request] = session.takeRequests(1);
  assert.ok(request.resume);
  session.receive(JSON.stringify({ type: "subscribed", id: request.id, channel: "book.X", epoch: "e2", seq: 3, resumed: false }), 1, 0);
  assert.equal(session.state("book.X").book, null);
  const events = session.receive(
    JSON.stringify({ type: "snapshot", channel: "book.X", epoch: "e2", seq: 3, ts: 1, checksum: CHECKSUM, data: BOOK }),
    1,
    0,
  );
  assert.deepEqual(events.map((e) => e.type), ["statusChanged", "bookSnapshot"]);
  assert.deepEqual(session.state("book.X").position, ["e2", 3]);
  assert.equal(session.state("book.X").counters.resumesSnapshot, 1);
});

test("a resume answered at another position is resynced", () => {
  const session = new Session();
  session.add("book.X", 0);
  session.connectionMade(0);
  live(session);
  session.connectionLost(1006);
  session.connectionMade(1);
  const [request] = session.takeRequests(1);
  const events = session.receive(
    JSON.stringify({ type: "subscribed", id: request.id, channel: "book.X", epoch: "e1", seq: 9, resumed: true }),
    1,
    0,
  );
  assert.equal(events[0].reason, "resume_mismatch");
  assert.equal(session.takeRequests(1)[0].op, "unsubscribe");
});

test("errors: unknown_channel retries with backoff, too_many_subscriptions fails until reconnect", () => {
  const session = new Session({ random: () => 1, retryBase: 0.5 });
  session.add("book.X", 0);
  session.add("book.Y", 0);
  session.connectionMade(0);
  const [x, y] = session.takeRequests(0);
  let events = session.receive(JSON.stringify({ type: "error", id: x.id, code: "unknown_channel", message: "no" }), 0, 0);
  assert.deepEqual(events, [{ type: "channelError", channel: "book.X", code: "unknown_channel", message: "no" }]);
  assert.deepEqual(session.takeRequests(0.4), []);
  assert.equal(session.takeRequests(0.5)[0].channel, "book.X");
  events = session.receive(JSON.stringify({ type: "error", id: y.id, code: "too_many_subscriptions", message: "" }), 1, 0);
  assert.equal(events[1].status, "failed");
  assert.equal(session.settled(), false);
  session.connectionLost(1006);
  events = session.connectionMade(2);
  assert.deepEqual(events.map((e) => [e.channel, e.status, e.reason]), [["book.Y", "subscribing", "reconnected"]]);
  assert.equal(session.state("book.X").counters.errors, 1);
});

test("an error that names no request of ours is reported without a channel", () => {
  const session = new Session();
  session.connectionMade(0);
  const events = session.receive('{"type":"error","code":"invalid_json","message":"x"}', 0, 0);
  assert.deepEqual(events, [{ type: "channelError", channel: null, code: "invalid_json", message: "x" }]);
  assert.deepEqual(session.receive("not json", 0, 0), []);
  assert.deepEqual(session.receive("[1]", 0, 0), []);
  assert.equal(session.stats.badFrames, 2);
});

test("requests are paced under the relay's rate limit", () => {
  const session = new Session({ requestRate: 16, requestBurst: 32 });
  for (let i = 0; i < 40; i++) session.add(`book.S${i}`, 0);
  session.connectionMade(0);
  assert.equal(session.takeRequests(0).length, 32);
  assert.equal(session.nextDeadline(), 1 / 16);
  assert.equal(session.takeRequests(0.5).length, 8);
  assert.equal(session.nextDeadline(), null);
});

test("unsubscribe drops the state at once and tells the relay", () => {
  const session = new Session();
  session.add("book.X", 0);
  session.connectionMade(0);
  live(session);
  session.remove("book.X", 1);
  assert.equal(session.state("book.X"), null);
  assert.deepEqual(session.channels(), []);
  const [request] = session.takeRequests(1);
  assert.equal(request.op, "unsubscribe");
  assert.deepEqual(session.receive(JSON.stringify(update(11).frame), 1, 0), []);
  session.receive(JSON.stringify({ type: "unsubscribed", id: request.id, channel: "book.X" }), 1, 0);
  assert.deepEqual(session.takeRequests(2), []);
});
