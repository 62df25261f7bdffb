// Test doubles for RelayClient: a WebSocket the test drives, and a clock with manual timers.
import { readFileSync } from "node:fs";

export const VECTORS = JSON.parse(readFileSync(new URL("./vectors.json", import.meta.url), "utf8"));

/** Timers and a monotonic clock that move only when the test says so (seconds). */
export class FakeClock {
  constructor() {
    this.now = 1000;
    this.timers = new Map();
    this.nextId = 1;
    this.monotonic = () => this.now;
    this.clockUs = () => Math.round(this.now * 1e6);
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.now + ms / 1000, fn });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  /** Moves time forward by `seconds`, running every timer that falls due, in order. */
  advance(seconds) {
    const end = this.now + seconds;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.now = Math.max(this.now, next[1].at);
      next[1].fn();
    }
    this.now = end;
  }
}

/** A WebSocket class whose sockets the test opens, feeds and closes. */
export function fakeWebSocket() {
  class FakeSocket {
    static sockets = [];

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      FakeSocket.sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.readyState = 3;
      this.closedWith = [code, reason];
    }

    // -- driven by the test
    open() {
      this.readyState = 1;
      this.onopen && this.onopen({});
    }

    deliver(frame) {
      this.onmessage && this.onmessage({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason });
    }

    /** Requests sent since the last call. */
    take() {
      const sent = this.sent;
      this.sent = [];
      return sent;
    }

    static get last() {
      return FakeSocket.sockets[FakeSocket.sockets.length - 1];
    }
  }
  return FakeSocket;
}

export const BOOK = {
  bids: [
    ["100.5", "1.25"],
    ["100.0", "3"],
    ["99.5", "0.010"],
  ],
  asks: [
    ["101.0", "2"],
    ["101.5", "0.5"],
  ],
};
