// RelayClient: the WebSocket adapter, driven by a fake WebSocket and a manual clock.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Book, RelayClient } from "../../../relay/static/relay-client.js";
import { BOOK, FakeClock, fakeWebSocket } from "./helpers.mjs";

const CHECKSUM = 1158620720;

function setup(channels = ["book.X"], options = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocket();
  const events = [];
  const client = new RelayClient(options.urls || "ws://relay-a/ws", channels, {
    WebSocket,
    random: () => 1,
    monotonic: clock.monotonic,
    clockUs: clock.clockUs,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    ...options,
  });
  client.on("*", (event) => events.push(event));
  return { clock, WebSocket, client, events };
}

function goLive(socket, channel = "book.X", seq = 10, epoch = "e1") {
  const index = socket.sent.findIndex((r) => r.channel === channel && r.op === "subscribe");
  const [request] = socket.sent.splice(index, 1);
  socket.deliver({ type: "subscribed", id: request.id, channel, epoch, seq, ...(request.resume ? { resumed: false } : {}) });
  const snapshot = channel.startsWith("book.")
    ? { checksum: CHECKSUM, data: BOOK }
    : { data: { trades: [{ id: "0", price: "100", size: "1", side: "sell" }] } };
  socket.deliver({ type: "snapshot", channel, epoch, seq, ts: 1, ...snapshot });
  return request;
}

function updateFrame(seq, diff, base) {
  const book = Book.fromPayload(base);
  book.apply(diff);
  return { frame: { type: "update", channel: "book.X", seq, ts: 999_000_000, checksum: book.checksum(), data: diff }, book };
}

test("needs a WebSocket constructor", () => {
  assert.throws(() => new RelayClient("ws://x/ws", [], { WebSocket: null }), /pass one/);
  assert.throws(() => new RelayClient([], [], { WebSocket: fakeWebSocket() }), RangeError);
});

test("connects, subscribes, keeps the book and reports events in order", () => {
  const { WebSocket, client, events } = setup(["book.X", "trades.X"]);
  client.start();
  const socket = WebSocket.last;
  assert.equal(socket.url, "ws://relay-a/ws");
  socket.open();
  const requests = socket.sent.map((r) => [r.op, r.channel]);
  assert.deepEqual(requests, [["subscribe", "book.X"], ["subscribe", "trades.X"]]);
  goLive(socket);
  const { frame } = updateFrame(11, { bids: [["100.5", "2"]], asks: [] }, BOOK);
  socket.deliver(frame);
  const trade = { id: "1", price: "100.5", size: "0.1", side: "buy" };
  goLive(socket, "trades.X", 4);
  socket.deliver({ type: "update", channel: "trades.X", seq: 5, ts: 1000_000_000, data: trade });
  assert.deepEqual(
    events.map((e) => e.type),
    ["connected", "statusChanged", "bookSnapshot", "bookUpdate", "statusChanged", "tradesSnapshot", "tradeUpdate"],
  );
  assert.equal(events[3].latencyUs, 1000 * 1e6 - 999_000_000);
  assert.deepEqual(client.book("book.X").bestBid(), ["100.5", "2"]);
  assert.deepEqual(client.trades("trades.X").map((t) => t.price), ["100", "100.5"]);
  assert.deepEqual(client.position("book.X"), ["e1", 11]);
  assert.equal(client.counters("book.X").checksumsVerified, 2);
  assert.equal(client.status("book.X"), "live");
  assert.equal(client.status("book.nope"), "closed");
  assert.ok(client.connected);
});

test("a token rides in a bearer subprotocol offered with relay.v1; a function is asked at each connect", () => {
  const plain = setup();
  plain.client.start();
  assert.equal(plain.WebSocket.last.protocols, undefined);

  let minted = 0;
  const { clock, WebSocket, client } = setup(["book.X"], { token: () => `tok${++minted}` });
  client.start();
  assert.deepEqual(WebSocket.last.protocols, ["relay.v1", "bearer.tok1"]);
  WebSocket.last.open();
  WebSocket.last.serverClose(1008, "token expired");
  assert.equal(client.connected, false);
  clock.advance(1); // the reconnect backoff (reconnectBase 0.25 s), not the connect timeout
  assert.equal(WebSocket.sockets.length, 2);
  assert.deepEqual(WebSocket.last.protocols, ["relay.v1", "bearer.tok2"]);
});

test("a relay shutting down (1001): reconnect at once to the next replica and resume", () => {
  const { clock, WebSocket, client, events } = setup(["book.X"], {
    urls: ["ws://relay-a/ws", "ws://relay-b/ws"],
    goingAwayJitter: 0.25,
  });
  client.start();
  const first = WebSocket.last;
  first.open();
  goLive(first);
  events.length = 0;
  first.serverClose(1001, "relay shutting down");
  assert.deepEqual(events.map((e) => e.type), ["statusChanged", "disconnected"]);
  assert.equal(events[0].status, "reconnecting");
  assert.deepEqual([events[1].code, events[1].reason, events[1].delay], [1001, "relay shutting down", 0.25]);
  assert.equal(client.status("book.X"), "reconnecting");
  assert.ok(client.book("book.X"), "the state is kept to resume from");
  clock.advance(0.25);
  const second = WebSocket.last;
  assert.equal(second.url, "ws://relay-b/ws");
  second.open();
  const [request] = second.take();
  assert.deepEqual(request.resume, { epoch: "e1", seq: 10 });
  second.deliver({ type: "subscribed", id: request.id, channel: "book.X", epoch: "e1", seq: 10, resumed: true });
  const { frame } = updateFrame(11, { bids: [], asks: [["101.0", "0"]] }, BOOK);
  second.deliver(frame);
  assert.equal(client.status("book.X"), "live");
  const counters = client.counters("book.X");
  assert.deepEqual([counters.reconnects, counters.resumesReplayed, counters.updates, counters.gaps], [1, 1, 1, 0]);
  assert.deepEqual(client.stats.closeCodes, { 1001: 1 });
});

test("a relay shutting down may say when to come back; the hint is capped", () => {
  const { clock, WebSocket, client, events } = setup();
  client.start();
  WebSocket.last.open();
  goLive(WebSocket.last);
  WebSocket.last.serverClose(1001, "relay shutting down; reconnect_in_ms=1234");
  assert.equal(events[events.length - 1].delay, 1.234);
  clock.advance(1.2);
  assert.equal(WebSocket.sockets.length, 1, "not before the hint");
  clock.advance(0.034);
  assert.equal(WebSocket.sockets.length, 2);
  WebSocket.last.open();
  WebSocket.last.serverClose(1001, "relay shutting down; reconnect_in_ms=999999999");
  assert.equal(events[events.length - 1].delay, 60);
});

test("failed attempts back off exponentially, capped; a delivering connection resets it", () => {
  const { clock, WebSocket, client, events } = setup(["book.X"], { reconnectBase: 0.25, reconnectMax: 2 });
  client.start();
  const delays = [];
  for (let i = 0; i < 6; i++) {
    WebSocket.last.serverClose(1006); // closed before it opened: a failed attempt
    const event = events[events.length - 1];
    assert.equal(event.code, null);
    delays.push(event.delay);
    clock.advance(event.delay);
  }
  assert.deepEqual(delays, [0.25, 0.5, 1, 2, 2, 2]);
  assert.equal(client.stats.connectFailures, 6);
  WebSocket.last.open();
  goLive(WebSocket.last);
  WebSocket.last.serverClose(1006);
  assert.equal(events[events.length - 1].delay, 0.25, "backoff starts over after a connection that delivered");
});

test("an attempt that does not open in time is abandoned", () => {
  const { clock, WebSocket, client, events } = setup(["book.X"], { connectTimeout: 3 });
  client.start();
  const socket = WebSocket.last;
  clock.advance(3);
  assert.ok(socket.closedWith, "the hanging socket was closed");
  assert.equal(events[0].type, "disconnected");
  assert.equal(events[0].reason, "connect timeout");
});

test("a silent connection is pinged, then dropped as 1006 and resumed", () => {
  const { clock, WebSocket, client, events } = setup(["book.X"], { heartbeat: 4 });
  client.start();
  const socket = WebSocket.last;
  socket.open();
  goLive(socket);
  clock.advance(4.5);
  assert.deepEqual(socket.take(), [{ op: "ping", id: "hb-1" }]);
  clock.advance(2.5);
  assert.ok(socket.closedWith);
  const disconnected = events.find((e) => e.type === "disconnected");
  assert.equal(disconnected.code, 1006);
  assert.equal(disconnected.reason, "no answer to ping");
  clock.advance(disconnected.delay);
  const next = WebSocket.last;
  assert.notEqual(next, socket);
  next.open();
  assert.deepEqual(next.take()[0].resume, { epoch: "e1", seq: 10 });
});

test("a pong (any frame) keeps the connection", () => {
  const { clock, WebSocket, client } = setup(["book.X"], { heartbeat: 4 });
  client.start();
  const socket = WebSocket.last;
  socket.open();
  goLive(socket);
  clock.advance(4.5);
  socket.deliver({ type: "pong", id: "hb-1" });
  clock.advance(2.5);
  assert.equal(socket.closedWith, null);
});

test("a gap resubscribes; the checksum mismatch is never handed out", () => {
  const { WebSocket, client, events } = setup();
  client.start();
  const socket = WebSocket.last;
  socket.open();
  goLive(socket);
  events.length = 0;
  socket.deliver({ type: "update", channel: "book.X", seq: 11, ts: 1, checksum: 12345, data: { bids: [["100.5", "9"]] } });
  assert.deepEqual(events.map((e) => [e.type, e.reason]), [["statusChanged", "checksum"]]);
  const [unsub] = socket.take();
  assert.equal(unsub.op, "unsubscribe");
  socket.deliver({ type: "unsubscribed", id: unsub.id, channel: "book.X" });
  const [sub] = socket.take();
  assert.deepEqual([sub.op, sub.resume], ["subscribe", undefined]);
  assert.equal(client.counters("book.X").checksumFailures, 1);
  assert.equal(client.book("book.X"), null);
});

test("a listener that throws does not stop the client", () => {
  const errors = [];
  const { WebSocket, client } = setup(["book.X"], { onListenerError: (err) => errors.push(err) });
  client.on("bookSnapshot", () => {
    throw new Error("render bug");
  });
  let updates = 0;
  const off = client.on("bookUpdate", () => updates++);
  client.start();
  const socket = WebSocket.last;
  socket.open();
  goLive(socket);
  socket.deliver(updateFrame(11, { bids: [["1", "1"]] }, BOOK).frame);
  off();
  socket.deliver(updateFrame(12, { bids: [["1", "0"]] }, { ...BOOK, bids: [...BOOK.bids, ["1", "1"]] }).frame);
  assert.equal(errors.length, 1);
  assert.equal(updates, 1);
  assert.equal(client.counters("book.X").updates, 2);
});

test("subscribe and unsubscribe while connected; close stops everything", () => {
  const { clock, WebSocket, client } = setup([]);
  client.start();
  const socket = WebSocket.last;
  socket.open();
  client.subscribe("book.X");
  goLive(socket);
  client.unsubscribe("book.X");
  assert.deepEqual(socket.take().map((r) => r.op), ["unsubscribe"]);
  assert.deepEqual(client.channels, []);
  client.close();
  assert.deepEqual(socket.closedWith, [1000, "client closing"]);
  clock.advance(60);
  assert.equal(WebSocket.sockets.length, 1, "no reconnect after close()");
  assert.equal(clock.timers.size, 0, "no timer left behind");
});
