// relay-client.js: a dependency-free client of the relay's WebSocket protocol (docs/protocol.md)
// for browsers and Node 20+. It mirrors the Python SDK (relay.client, docs/client.md):
//
//   - it keeps a local book (or the last trades) per channel from the relay's snapshot and
//     updates, applies updates strictly in seq order and verifies the relay's book checksum;
//   - a gap, a checksum mismatch or a frame it cannot apply discards the channel's state and
//     replaces the subscription (unsubscribe, then subscribe: a fresh snapshot);
//   - when the connection drops it reconnects with capped, full-jitter backoff, to the same URL
//     or the next replica of a list, and resumes every channel from {epoch, seq};
//   - it counts all of it, per channel, and tells you through events.
//
// Layers, as in the Python SDK: Book (an L2 book keyed by price value, holding the producer's
// strings), ChannelState (one channel's state machine), Session (the protocol for many channels:
// requests, replies, resyncs, resumes, pacing; pure: time passed in, randomness injected) and
// RelayClient (the WebSocket adapter: connects, reads, writes, reconnects, emits events).
//
// Node 20 has no global WebSocket (unless --experimental-websocket): pass one as
// `new RelayClient(url, channels, {WebSocket})`.

export const DEFAULT_DEPTH = 10;
export const DEFAULT_TRADES_KEPT = 100;
export const DEFAULT_REQUEST_RATE = 16;
export const DEFAULT_REQUEST_BURST = 32;
export const DEFAULT_RETRY_BASE = 0.5;
export const DEFAULT_RETRY_MAX = 10;

const GOING_AWAY = 1001;
const POLICY_VIOLATION = 1008;
const SLOW_CONSUMER = 4000;
// A relay that shuts down may say when to come back ("relay shutting down; reconnect_in_ms=1234"),
// so that its clients do not all reconnect in the same second; the hint is obeyed up to a cap.
const RECONNECT_HINT = /reconnect_in_ms=(\d{1,9})/;
const MAX_HINT_S = 60;
const REPORTED_CLOSES = { [POLICY_VIOLATION]: "rate limit exceeded", [SLOW_CONSUMER]: "slow consumer" };

/** Where a channel is; every change is announced by a `statusChanged` event. */
export const ChannelStatus = Object.freeze({
  SUBSCRIBING: "subscribing", // no state yet: waiting for the first snapshot
  LIVE: "live", // state is current; updates are applied in seq order
  RESYNCING: "resyncing", // state discarded (gap, checksum, ...): waiting for a snapshot
  RECONNECTING: "reconnecting", // connection lost: state kept as of its seq, to resume
  FAILED: "failed", // the relay refused the subscription; retried on the next connection
  CLOSED: "closed", // unsubscribed, or the client was closed
});

/** Why a channel's state was discarded (`statusChanged.reason` when resyncing). */
export const ResyncReason = Object.freeze({
  GAP: "gap",
  CHECKSUM: "checksum",
  MALFORMED: "malformed",
  NO_SNAPSHOT: "no_snapshot",
  RESUME_MISMATCH: "resume_mismatch",
  RELAY_STATE: "relay_state",
});

// Subscribe errors another try on the same connection cannot fix; others are retried.
const FINAL_SUBSCRIBE_ERRORS = new Set(["invalid_channel", "too_many_subscriptions", "forbidden"]);
const CHANNEL_RE = /^([a-z][a-z0-9_]{0,19})\.([A-Za-z0-9_-]{1,40})$/;
const KINDS = new Set(["book", "trades"]);

/** The kind ("book" or "trades") of a well-formed channel name this client serves, or null. */
export function channelKind(name) {
  if (typeof name !== "string") return null;
  const match = CHANNEL_RE.exec(name);
  return match && KINDS.has(match[1]) ? match[1] : null;
}

// -- CRC-32 and the relay's book checksum -------------------------------------------------------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** Standard CRC-32 (ISO-HDLC, as zlib.crc32) of an ASCII string, as an unsigned integer. */
export function crc32(text) {
  let crc = 0xffffffff;
  for (let i = 0; i < text.length; i++) {
    crc = CRC_TABLE[(crc ^ text.charCodeAt(i)) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** "bid1p:bid1s:ask1p:ask1s:..." over the top `depth` levels a side (levels best first). */
export function checksumText(bids, asks, depth = DEFAULT_DEPTH) {
  const parts = [];
  for (let i = 0; i < depth; i++) {
    if (i < bids.length) parts.push(bids[i][0], bids[i][1]);
    if (i < asks.length) parts.push(asks[i][0], asks[i][1]);
  }
  return parts.join(":");
}

/** The relay's checksum of a book (docs/protocol.md, "The book checksum"); 0 when empty. */
export function bookChecksum(book, depth = DEFAULT_DEPTH) {
  return crc32(checksumText(book.bids(depth), book.asks(depth), depth));
}

// -- Decimal strings ------------------------------------------------------------------------------

const DECIMAL_RE = /^[0-9]+(\.[0-9]+)?$/;
const ZERO_RE = /^0+(\.0+)?$/;

/** A decimal string's value as a canonical string ("0100.50" -> "100.5"): the level's key. */
function decimalKey(text) {
  const dot = text.indexOf(".");
  let whole = dot < 0 ? text : text.slice(0, dot);
  let frac = dot < 0 ? "" : text.slice(dot + 1);
  whole = whole.replace(/^0+(?=.)/, "");
  frac = frac.replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : whole;
}

/** Compares two canonical decimal keys by value, exactly (no floating point). */
export function compareDecimal(a, b) {
  const da = a.indexOf(".");
  const db = b.indexOf(".");
  const wa = da < 0 ? a : a.slice(0, da);
  const wb = db < 0 ? b : b.slice(0, db);
  if (wa.length !== wb.length) return wa.length < wb.length ? -1 : 1;
  if (wa !== wb) return wa < wb ? -1 : 1;
  const fa = da < 0 ? "" : a.slice(da + 1);
  const fb = db < 0 ? "" : b.slice(db + 1);
  if (fa === fb) return 0;
  return fa < fb ? -1 : 1; // no trailing zeros: digit strings compare as fractions do
}

// -- Book -----------------------------------------------------------------------------------------

/** A diff or snapshot that is not a well-formed book payload. */
export class BookError extends Error {
  constructor(message) {
    super(message);
    this.name = "BookError";
  }
}

function parseLevel(raw) {
  if (!Array.isArray(raw) || raw.length < 2) {
    throw new BookError(`level must be [price, size], got ${JSON.stringify(raw)}`);
  }
  const [price, size] = raw;
  if (typeof price !== "string" || typeof size !== "string") {
    throw new BookError(`price and size must be decimal strings, got ${JSON.stringify(raw)}`);
  }
  if (!DECIMAL_RE.test(price) || !DECIMAL_RE.test(size)) {
    if (size.startsWith("-") && DECIMAL_RE.test(size.slice(1))) {
      throw new BookError(`negative size in level ${JSON.stringify(raw)}`);
    }
    throw new BookError(`not a plain decimal number in level ${JSON.stringify(raw)}`);
  }
  return { key: decimalKey(price), price, size, removes: ZERO_RE.test(size) };
}

function parseSide(payload, side) {
  const raw = payload[side] === undefined ? [] : payload[side];
  if (!Array.isArray(raw)) throw new BookError(`"${side}" must be a list of levels`);
  return raw.map(parseLevel);
}

// Index of `key` in `keys` (sorted by `cmp`), or where it would go.
function bisect(keys, key, cmp) {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmp(keys[mid], key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const descending = (a, b) => compareDecimal(b, a);

function applySide(levels, keys, diff, cmp) {
  for (const level of diff) {
    if (level.removes) {
      if (levels.delete(level.key)) keys.splice(bisect(keys, level.key, cmp), 1);
    } else {
      if (!levels.has(level.key)) keys.splice(bisect(keys, level.key, cmp), 0, level.key);
      levels.set(level.key, [level.price, level.size]);
    }
  }
}

/**
 * An L2 book keyed by price value, holding the producer's own [price, size] strings.
 * Bids and asks are kept best first: bids descending, asks ascending. No level has size zero:
 * a diff with size zero removes the level.
 */
export class Book {
  constructor() {
    this._bids = new Map();
    this._asks = new Map();
    this._bidKeys = []; // best first (descending)
    this._askKeys = []; // best first (ascending)
  }

  static fromPayload(payload) {
    const book = new Book();
    book.apply(payload);
    return book;
  }

  /** Applies a diff {"bids": [...], "asks": [...]}; validates everything before changing anything. */
  apply(payload) {
    if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
      throw new BookError("book payload must be a JSON object");
    }
    const bids = parseSide(payload, "bids");
    const asks = parseSide(payload, "asks");
    applySide(this._bids, this._bidKeys, bids, descending);
    applySide(this._asks, this._askKeys, asks, compareDecimal);
  }

  /** Bids best first (descending price), as [price, size] strings; `depth` levels at most. */
  bids(depth) {
    const keys = depth === undefined || depth === null ? this._bidKeys : this._bidKeys.slice(0, depth);
    return keys.map((k) => this._bids.get(k));
  }

  /** Asks best first (ascending price). */
  asks(depth) {
    const keys = depth === undefined || depth === null ? this._askKeys : this._askKeys.slice(0, depth);
    return keys.map((k) => this._asks.get(k));
  }

  get bidCount() {
    return this._bidKeys.length;
  }

  get askCount() {
    return this._askKeys.length;
  }

  bestBid() {
    return this._bidKeys.length ? this._bids.get(this._bidKeys[0]) : null;
  }

  bestAsk() {
    return this._askKeys.length ? this._asks.get(this._askKeys[0]) : null;
  }

  /** Best ask minus best bid as a Number (for display); null when a side is empty. */
  spread() {
    const bid = this.bestBid();
    const ask = this.bestAsk();
    return bid && ask ? Number(ask[0]) - Number(bid[0]) : null;
  }

  /** (best bid + best ask) / 2 as a Number; null when a side is empty. */
  mid() {
    const bid = this.bestBid();
    const ask = this.bestAsk();
    return bid && ask ? (Number(ask[0]) + Number(bid[0])) / 2 : null;
  }

  isCrossed() {
    return Boolean(
      this._bidKeys.length && this._askKeys.length && compareDecimal(this._bidKeys[0], this._askKeys[0]) >= 0,
    );
  }

  checksum(depth = DEFAULT_DEPTH) {
    return bookChecksum(this, depth);
  }

  /** {"bids": [[price, size], ...], "asks": [...]}, every level, best first. */
  toPayload() {
    return { bids: this.bids().map((l) => [...l]), asks: this.asks().map((l) => [...l]) };
  }

  copy() {
    const other = new Book();
    other._bids = new Map(this._bids);
    other._asks = new Map(this._asks);
    other._bidKeys = [...this._bidKeys];
    other._askKeys = [...this._askKeys];
    return other;
  }
}

// -- One channel ----------------------------------------------------------------------------------

function integer(value) {
  return Number.isSafeInteger(value) ? value : null;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function text(value) {
  return typeof value === "string" ? value : value === undefined || value === null ? "" : String(value);
}

/** A trade as the producer wrote it: {id, price, size, side, data}; strings, `data` the whole object. */
export function tradeFromData(data) {
  return { id: text(data.id), price: text(data.price), size: text(data.size), side: text(data.side), data };
}

export function newChannelCounters() {
  return {
    snapshots: 0, // snapshots received (first, resync, resume, relay-sent)
    updates: 0, // updates applied (and delivered)
    gaps: 0, // updates whose seq skipped ahead
    duplicates: 0, // updates at or before the applied seq: ignored
    checksumsVerified: 0, // book frames whose checksum matched
    checksumFailures: 0, // book frames whose checksum did not
    malformed: 0, // frames that could not be applied
    resubscribes: 0, // resyncs: state discarded, fresh snapshot requested
    reconnects: 0, // connection losses this channel went through
    resumesReplayed: 0, // resumes the relay answered by replaying
    resumesSnapshot: 0, // resumes the relay answered with a snapshot
    errors: 0, // error replies about this channel
  };
}

/**
 * One channel's local state, fed the relay's snapshot and update frames (decoded JSON) in order.
 * `snapshot()` and `update()` return {events, resync}: events for the user, or the reason to
 * resync (then no event: an update is never handed out unless applied to a verified state).
 */
export class ChannelState {
  constructor(name, kind, { checksumDepth = DEFAULT_DEPTH, tradesKept = DEFAULT_TRADES_KEPT } = {}) {
    this.name = name;
    this.kind = kind;
    this.checksumDepth = kind === "book" ? checksumDepth : 0;
    this.tradesKept = tradesKept;
    this.status = ChannelStatus.SUBSCRIBING;
    this.epoch = null;
    this.seq = null;
    this.ts = null;
    this.book = null;
    this.trades = [];
    this.counters = newChannelCounters();
    this.streak = 0; // resyncs since the last update applied and verified
  }

  /** [epoch, seq] of the state held, to resume from; null when there is none. */
  get position() {
    return this.epoch === null || this.seq === null ? null : [this.epoch, this.seq];
  }

  setStatus(status, reason) {
    if (status === this.status) return [];
    const previous = this.status;
    this.status = status;
    return [{ type: "statusChanged", channel: this.name, status, previous, reason }];
  }

  discard() {
    this.epoch = this.seq = this.ts = null;
    this.book = null;
    this.trades = [];
  }

  snapshot(frame, receivedUs) {
    this.counters.snapshots += 1;
    const epoch = frame.epoch;
    const seq = integer(frame.seq);
    const ts = integer(frame.ts);
    const data = frame.data;
    if (typeof epoch !== "string" || seq === null || ts === null || !isObject(data)) return this._malformed();
    let event;
    if (this.kind === "book") {
      let book;
      try {
        book = Book.fromPayload(data);
      } catch (err) {
        if (err instanceof BookError) return this._malformed();
        throw err;
      }
      const failed = this._verify(book, frame.checksum);
      if (failed) return { events: [], resync: failed };
      this.book = book;
      event = {
        type: "bookSnapshot",
        channel: this.name,
        epoch,
        seq,
        ts,
        book,
        checksum: integer(frame.checksum),
        receivedUs,
      };
    } else {
      const raw = data.trades;
      if (!Array.isArray(raw) || !raw.every(isObject)) return this._malformed();
      const trades = raw.map(tradeFromData);
      this.trades = this.tradesKept ? trades.slice(-this.tradesKept) : [];
      event = { type: "tradesSnapshot", channel: this.name, epoch, seq, ts, trades, receivedUs };
    }
    this.epoch = epoch;
    this.seq = seq;
    this.ts = ts;
    return { events: [...this.setStatus(ChannelStatus.LIVE, "snapshot"), event], resync: null };
  }

  update(frame, receivedUs) {
    if (this.status !== ChannelStatus.LIVE || this.seq === null) {
      return { events: [], resync: ResyncReason.NO_SNAPSHOT };
    }
    const seq = integer(frame.seq);
    const ts = integer(frame.ts);
    const data = frame.data;
    if (seq === null || ts === null || !isObject(data)) return this._malformed();
    if (seq <= this.seq) {
      this.counters.duplicates += 1;
      return { events: [], resync: null };
    }
    if (seq !== this.seq + 1) {
      this.counters.gaps += 1;
      return { events: [], resync: ResyncReason.GAP };
    }
    let event;
    if (this.kind === "book") {
      try {
        this.book.apply(data); // validates every level before changing anything
      } catch (err) {
        if (err instanceof BookError) return this._malformed();
        throw err;
      }
      const failed = this._verify(this.book, frame.checksum);
      if (failed) return { events: [], resync: failed };
      event = {
        type: "bookUpdate",
        channel: this.name,
        seq,
        ts,
        diff: data,
        book: this.book,
        checksum: integer(frame.checksum),
        receivedUs,
        latencyUs: receivedUs - ts,
      };
    } else {
      const trade = tradeFromData(data);
      if (this.tradesKept) {
        this.trades.push(trade);
        if (this.trades.length > this.tradesKept) this.trades.splice(0, this.trades.length - this.tradesKept);
      }
      event = { type: "tradeUpdate", channel: this.name, seq, ts, trade, receivedUs, latencyUs: receivedUs - ts };
    }
    this.seq = seq;
    this.ts = ts;
    this.counters.updates += 1;
    this.streak = 0;
    return { events: [event], resync: null };
  }

  _verify(book, checksum) {
    if (checksum === undefined || checksum === null || !this.checksumDepth) return null;
    const expected = integer(checksum);
    if (expected === null) {
      this.counters.malformed += 1;
      return ResyncReason.MALFORMED;
    }
    if (bookChecksum(book, this.checksumDepth) !== expected) {
      this.counters.checksumFailures += 1;
      return ResyncReason.CHECKSUM;
    }
    this.counters.checksumsVerified += 1;
    return null;
  }

  _malformed() {
    this.counters.malformed += 1;
    return { events: [], resync: ResyncReason.MALFORMED };
  }
}

// -- Backoff and pacing ---------------------------------------------------------------------------

/** Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt)). */
export function fullJitter(random, base, cap, attempt) {
  return random() * Math.min(cap, base * 2 ** Math.min(attempt, 64));
}

/** Successive full-jitter delays (seconds); `reset()` after a success. */
export class Backoff {
  constructor(base, cap, random = Math.random) {
    if (!(base > 0) || cap < base) throw new RangeError("backoff needs 0 < base <= cap");
    this.base = base;
    this.cap = cap;
    this.attempts = 0;
    this._random = random;
  }

  nextDelay() {
    const delay = fullJitter(this._random, this.base, this.cap, this.attempts);
    this.attempts += 1;
    return delay;
  }

  reset() {
    this.attempts = 0;
  }
}

/** A token bucket for our own requests (time in seconds), with the time a token is next ready. */
class RequestBucket {
  constructor(rate, burst) {
    if (!(rate > 0) || !(burst >= 1)) throw new RangeError("request pacing needs rate > 0 and burst >= 1");
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.updated = 0;
  }

  reset(now) {
    this.tokens = this.burst;
    this.updated = now;
  }

  take(now) {
    if (now > this.updated) {
      this.tokens = Math.min(this.burst, this.tokens + (now - this.updated) * this.rate);
      this.updated = now;
    }
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    return false;
  }

  readyAt() {
    return this.tokens >= 1 ? this.updated : this.updated + (1 - this.tokens) / this.rate;
  }
}

// -- Session: the protocol for many channels ------------------------------------------------------

// The relay's view of one channel's subscription on the current connection.
const Wire = Object.freeze({
  IDLE: "idle",
  SUBSCRIBING: "subscribing",
  SUBSCRIBED: "subscribed",
  UNSUBSCRIBING: "unsubscribing",
});

function newSub(state) {
  return {
    state,
    wanted: true,
    wire: Wire.IDLE,
    requestId: null,
    resuming: false, // the subscribe in flight carries `resume`
    fresh: false, // the relay's subscription must be replaced (a resync)
    due: null, // when to look at this channel's wire again (seconds)
    retries: 0, // error replies in a row, for the retry backoff
  };
}

const accepting = (sub) => sub.wanted && sub.wire === Wire.SUBSCRIBED && !sub.fresh;

/**
 * The client side of the protocol for many channels, as a pure state machine: no I/O, time
 * passed in (`now`, monotonic seconds), randomness injected (`random()` in [0, 1)). The adapter
 * feeds it frames (`receive`) and sends what `takeRequests` returns. Per channel the relay's view
 * moves idle -> subscribing -> subscribed -> unsubscribing -> idle, one request in flight at a
 * time; frames are applied only while subscribed and not about to be replaced.
 */
export class Session {
  constructor({
    checksumDepth = DEFAULT_DEPTH,
    tradesKept = DEFAULT_TRADES_KEPT,
    requestRate = DEFAULT_REQUEST_RATE,
    requestBurst = DEFAULT_REQUEST_BURST,
    retryBase = DEFAULT_RETRY_BASE,
    retryMax = DEFAULT_RETRY_MAX,
    random = Math.random,
  } = {}) {
    if (checksumDepth < 0 || tradesKept < 0) throw new RangeError("checksumDepth and tradesKept must be >= 0");
    if (!(retryBase > 0) || retryMax < retryBase) throw new RangeError("retries need 0 < retryBase <= retryMax");
    this.checksumDepth = checksumDepth;
    this.tradesKept = tradesKept;
    this.retryBase = retryBase;
    this.retryMax = retryMax;
    this.random = random;
    this.stats = { connects: 0, connectFailures: 0, disconnects: 0, closeCodes: {}, badFrames: 0 };
    this.connected = false;
    this._subs = new Map();
    this._requests = new Map(); // id -> [channel, op] in flight
    this._nextId = 1;
    this._bucket = new RequestBucket(requestRate, requestBurst);
  }

  // -- what the user asks

  /** Want `name`; throws a TypeError for a name that is not <book|trades>.<symbol>. */
  add(name, now) {
    const kind = channelKind(name);
    if (kind === null) throw new TypeError(`invalid channel ${JSON.stringify(name)}: expected <book|trades>.<symbol>`);
    let sub = this._subs.get(name);
    if (sub && sub.wanted) return;
    const state = new ChannelState(name, kind, { checksumDepth: this.checksumDepth, tradesKept: this.tradesKept });
    if (!sub) {
      sub = newSub(state);
      this._subs.set(name, sub);
    } else {
      // still leaving the relay after an unsubscribe: join again, from scratch
      sub.state = state;
      sub.wanted = true;
      sub.retries = 0;
      sub.fresh = sub.wire === Wire.SUBSCRIBED;
    }
    if (this.connected) this._schedule(sub, now);
  }

  /** Stop wanting `name`: its state goes now; the relay is told when possible. */
  remove(name, now) {
    const sub = this._subs.get(name);
    if (!sub || !sub.wanted) return;
    sub.wanted = false;
    sub.state.discard();
    sub.state.status = ChannelStatus.CLOSED;
    if (sub.wire === Wire.IDLE) this._subs.delete(name);
    else if (this.connected) this._schedule(sub, now);
  }

  /** The client stopped: every channel is closed; its last state stays readable. */
  close() {
    this.connected = false;
    this._requests.clear();
    for (const sub of this._subs.values()) {
      sub.state.status = ChannelStatus.CLOSED;
      sub.wire = Wire.IDLE;
      sub.requestId = null;
      sub.due = null;
    }
  }

  // -- reading

  channels() {
    return [...this._subs].filter(([, sub]) => sub.wanted).map(([name]) => name);
  }

  state(name) {
    const sub = this._subs.get(name);
    return sub && sub.wanted ? sub.state : null;
  }

  /** Every wanted channel is live (or refused): the connection delivered. */
  settled() {
    for (const sub of this._subs.values()) {
      if (sub.wanted && sub.state.status !== ChannelStatus.LIVE && sub.state.status !== ChannelStatus.FAILED) {
        return false;
      }
    }
    return true;
  }

  // -- connection lifecycle

  /** A new connection: every wanted channel subscribes, resuming where it has state. */
  connectionMade(now) {
    this.connected = true;
    this.stats.connects += 1;
    this._requests.clear();
    this._bucket.reset(now);
    const events = [];
    for (const [name, sub] of [...this._subs]) {
      Object.assign(sub, { wire: Wire.IDLE, requestId: null, resuming: false, fresh: false, due: null, retries: 0 });
      if (!sub.wanted) {
        this._subs.delete(name);
        continue;
      }
      if (sub.state.status === ChannelStatus.FAILED) {
        events.push(...sub.state.setStatus(ChannelStatus.SUBSCRIBING, "reconnected"));
      }
      this._schedule(sub, now);
    }
    return events;
  }

  /** The connection ended (`code`: its close code, or null): live channels keep their state. */
  connectionLost(code) {
    this.connected = false;
    this.stats.disconnects += 1;
    if (code !== null && code !== undefined) this.stats.closeCodes[code] = (this.stats.closeCodes[code] || 0) + 1;
    this._requests.clear();
    const events = [];
    for (const [name, sub] of [...this._subs]) {
      Object.assign(sub, { wire: Wire.IDLE, requestId: null, resuming: false, fresh: false, due: null });
      if (!sub.wanted) {
        this._subs.delete(name);
        continue;
      }
      const state = sub.state;
      if (state.status === ChannelStatus.FAILED) continue;
      state.counters.reconnects += 1;
      if (state.status === ChannelStatus.LIVE) {
        events.push(...state.setStatus(ChannelStatus.RECONNECTING, "disconnected"));
      }
    }
    return events;
  }

  // -- requests

  /** The requests due by `now` that the pacing allows, to send in this order. */
  takeRequests(now) {
    if (!this.connected) return [];
    const due = [...this._subs]
      .filter(([, sub]) => sub.due !== null && sub.due <= now)
      .sort(([na, a], [nb, b]) => a.due - b.due || (na < nb ? -1 : na > nb ? 1 : 0));
    const out = [];
    for (const [name, sub] of due) {
      const op = this._nextOp(name, sub);
      if (op === null) {
        sub.due = null;
        continue;
      }
      if (!this._bucket.take(now)) break;
      sub.due = null;
      out.push(this._request(name, sub, op));
    }
    return out;
  }

  /** When `takeRequests` may next have something (seconds); null: nothing is waiting. */
  nextDeadline() {
    if (!this.connected) return null;
    let min = null;
    for (const sub of this._subs.values()) {
      if (sub.due !== null && (min === null || sub.due < min)) min = sub.due;
    }
    return min === null ? null : Math.max(min, this._bucket.readyAt());
  }

  _nextOp(name, sub) {
    if (sub.wire === Wire.IDLE) {
      if (!sub.wanted) {
        this._subs.delete(name);
        return null;
      }
      return sub.state.status === ChannelStatus.FAILED ? null : "subscribe";
    }
    if (sub.wire === Wire.SUBSCRIBED && (sub.fresh || !sub.wanted)) return "unsubscribe";
    return null; // a request is in flight: its reply decides
  }

  _request(name, sub, op) {
    const id = this._nextId++;
    this._requests.set(id, [name, op]);
    sub.requestId = id;
    const message = { op, channel: name, id };
    if (op === "unsubscribe") {
      sub.wire = Wire.UNSUBSCRIBING;
      return message;
    }
    sub.wire = Wire.SUBSCRIBING;
    const position = sub.state.position;
    sub.resuming = position !== null;
    if (position !== null) message.resume = { epoch: position[0], seq: position[1] };
    return message;
  }

  _schedule(sub, at) {
    sub.due = sub.due === null ? at : Math.min(sub.due, at);
  }

  _retryDelay(sub) {
    const delay = fullJitter(this.random, this.retryBase, this.retryMax, sub.retries);
    sub.retries += 1;
    return delay;
  }

  // -- frames

  /** Applies one frame from the relay (text or a decoded object); returns the events, in order. */
  receive(data, now, receivedUs) {
    let frame = data;
    if (typeof data === "string") {
      try {
        frame = JSON.parse(data);
      } catch {
        this.stats.badFrames += 1;
        return [];
      }
    }
    if (!isObject(frame)) {
      this.stats.badFrames += 1;
      return [];
    }
    const type = frame.type;
    if (type === "update" || type === "snapshot") {
      const sub = typeof frame.channel === "string" ? this._subs.get(frame.channel) : undefined;
      if (!sub || !accepting(sub)) return []; // not ours (any more), or being replaced
      let step;
      if (type === "update") {
        step = sub.state.update(frame, receivedUs);
      } else {
        step = sub.state.snapshot(frame, receivedUs);
        sub.retries = 0;
      }
      if (step.resync) return [...step.events, ...this._resync(sub, step.resync, now)];
      return step.events;
    }
    if (type === "subscribed") return this._subscribed(frame, now);
    if (type === "unsubscribed") return this._unsubscribed(frame, now);
    if (type === "error") return this._error(frame, now);
    return []; // pong, and frame types of later protocol versions
  }

  _replyTarget(frame, op) {
    const id = frame.id;
    if (!Number.isSafeInteger(id)) return null;
    const entry = this._requests.get(id);
    if (!entry || entry[1] !== op) return null;
    this._requests.delete(id);
    const name = entry[0];
    const sub = this._subs.get(name);
    if (!sub || sub.requestId !== id) return null;
    sub.requestId = null;
    return [name, sub];
  }

  _subscribed(frame, now) {
    const target = this._replyTarget(frame, "subscribe");
    if (!target) return [];
    const sub = target[1];
    sub.wire = Wire.SUBSCRIBED;
    const resuming = sub.resuming;
    sub.resuming = false;
    if (!sub.wanted) {
      this._schedule(sub, now); // unsubscribed meanwhile: leave again
      return [];
    }
    if (!resuming) return []; // the snapshot follows
    const state = sub.state;
    if (frame.resumed === true) {
      const position = state.position;
      if (position && position[0] === frame.epoch && position[1] === frame.seq) {
        state.counters.resumesReplayed += 1;
        sub.retries = 0;
        return state.setStatus(ChannelStatus.LIVE, "resumed");
      }
      return this._resync(sub, ResyncReason.RESUME_MISMATCH, now);
    }
    state.counters.resumesSnapshot += 1;
    state.discard(); // a snapshot follows and replaces it
    return [];
  }

  _unsubscribed(frame, now) {
    const target = this._replyTarget(frame, "unsubscribe");
    if (target) this._left(target[0], target[1], now);
    return [];
  }

  _left(name, sub, now) {
    sub.wire = Wire.IDLE;
    sub.fresh = false;
    if (sub.wanted) this._schedule(sub, now);
    else this._subs.delete(name);
  }

  _error(frame, now) {
    const code = text(frame.code);
    const message = text(frame.message);
    const entry = Number.isSafeInteger(frame.id) ? this._requests.get(frame.id) : undefined;
    if (!entry) return [{ type: "channelError", channel: null, code, message }];
    const [name, op] = entry;
    const target = this._replyTarget(frame, op);
    const events = [{ type: "channelError", channel: name, code, message }];
    if (!target) return events;
    const sub = target[1];
    sub.state.counters.errors += 1;
    if (op === "unsubscribe") {
      if (code === "not_subscribed") {
        this._left(name, sub, now);
      } else {
        // rate_limited, or unknown: still subscribed; try again later
        sub.wire = Wire.SUBSCRIBED;
        this._schedule(sub, now + this._retryDelay(sub));
      }
      return events;
    }
    sub.resuming = false;
    if (code === "already_subscribed") {
      sub.wire = Wire.SUBSCRIBED;
      return [...events, ...this._resync(sub, ResyncReason.RELAY_STATE, now)];
    }
    sub.wire = Wire.IDLE;
    if (!sub.wanted) {
      this._subs.delete(name);
      return events;
    }
    const state = sub.state;
    if (FINAL_SUBSCRIBE_ERRORS.has(code)) {
      state.discard();
      return [...events, ...state.setStatus(ChannelStatus.FAILED, code)];
    }
    if (code === "invalid_resume") return [...events, ...this._resync(sub, ResyncReason.RESUME_MISMATCH, now)];
    this._schedule(sub, now + this._retryDelay(sub)); // unknown_channel, rate_limited, anything newer
    return events;
  }

  /** Discards the state and asks for a fresh snapshot (a new subscription). */
  _resync(sub, reason, now) {
    const state = sub.state;
    state.discard();
    state.counters.resubscribes += 1;
    state.streak += 1;
    if (sub.wire === Wire.SUBSCRIBED) sub.fresh = true;
    // The first resync goes at once; more in a row, with nothing applied in between, are spaced.
    const delay = state.streak > 1 ? fullJitter(this.random, this.retryBase, this.retryMax, state.streak - 2) : 0;
    this._schedule(sub, now + delay);
    return state.setStatus(ChannelStatus.RESYNCING, reason);
  }
}

// -- RelayClient: the WebSocket adapter -----------------------------------------------------------

function defaultMonotonic() {
  return (globalThis.performance ? globalThis.performance.now() : Date.now()) / 1000;
}

function defaultClockUs() {
  const perf = globalThis.performance;
  if (perf && typeof perf.timeOrigin === "number") return Math.round((perf.timeOrigin + perf.now()) * 1000);
  return Date.now() * 1000;
}

const OPEN = 1;

/**
 * A relay client: local books and trades for many channels, kept in seq order and verified.
 *
 *   const client = new RelayClient("ws://127.0.0.1:8080/ws", ["book.BTC-USD", "trades.BTC-USD"]);
 *   client.on("bookUpdate", (e) => console.log(e.seq, e.book.bestBid(), e.book.bestAsk()));
 *   client.start();
 *
 * `urls` is one WebSocket URL or a list of replicas of one relay: each reconnect goes to the next.
 * Events (`client.on(type, fn)`, "*" for all; returns a function that removes the listener):
 * connected, disconnected, statusChanged, channelError, bookSnapshot, bookUpdate, tradesSnapshot,
 * tradeUpdate. Listeners run synchronously, in order, before the next frame is read: when a
 * listener holds an event, the client's state is exactly the state after that event.
 */
export class RelayClient {
  constructor(urls, channels = [], options = {}) {
    const {
      WebSocket: WebSocketImpl = globalThis.WebSocket,
      checksumDepth = DEFAULT_DEPTH,
      tradesKept = DEFAULT_TRADES_KEPT,
      reconnectBase = 0.25,
      reconnectMax = 10,
      goingAwayJitter = 0.25,
      retryBase = DEFAULT_RETRY_BASE,
      retryMax = DEFAULT_RETRY_MAX,
      requestRate = DEFAULT_REQUEST_RATE,
      requestBurst = DEFAULT_REQUEST_BURST,
      heartbeat = 15,
      connectTimeout = 10,
      token = null,
      random = Math.random,
      monotonic = defaultMonotonic,
      clockUs = defaultClockUs,
      setTimeout: setTimer = globalThis.setTimeout.bind(globalThis),
      clearTimeout: clearTimer = globalThis.clearTimeout.bind(globalThis),
      onListenerError = (err) => queueMicrotask(() => { throw err; }),
    } = options;
    this.urls = typeof urls === "string" ? [urls] : [...urls];
    if (!this.urls.length) throw new RangeError("at least one relay URL is needed");
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError("no WebSocket: pass one as new RelayClient(urls, channels, {WebSocket})");
    }
    if (goingAwayJitter < 0) throw new RangeError("goingAwayJitter must be >= 0");
    this._WebSocket = WebSocketImpl;
    this._random = random;
    this._monotonic = monotonic;
    this._clockUs = clockUs;
    this._setTimer = setTimer;
    this._clearTimer = clearTimer;
    this._onListenerError = onListenerError;
    this._session = new Session({ checksumDepth, tradesKept, requestRate, requestBurst, retryBase, retryMax, random });
    for (const name of channels) this._session.add(name, monotonic());
    this._backoff = new Backoff(reconnectBase, reconnectMax, random);
    this._goingAwayJitter = goingAwayJitter;
    this._heartbeat = heartbeat;
    this._connectTimeout = connectTimeout;
    this._token = token;
    this._urlIndex = 0;
    this._listeners = new Map();
    this._ws = null;
    this._opened = false;
    this._settled = false;
    this._attempt = 0;
    this._started = false;
    this._closed = false;
    this._writeTimer = null;
    this._retryTimer = null;
    this._connectTimer = null;
    this._heartbeatTimer = null;
    this._lastFrame = 0;
    this._pingSent = null;
    this._pings = 0;
  }

  // -- lifecycle

  /** Starts connecting (in the background); returns at once. Idempotent. */
  start() {
    if (this._started || this._closed) return this;
    this._started = true;
    this._connect();
    return this;
  }

  /** Closes the connection and stops reconnecting. The last state stays readable. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._stopTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, "client closing");
      } catch {
        // already closing
      }
    }
    this._session.close();
  }

  // -- channels

  /** Adds channels; they are subscribed as soon as the connection allows. */
  subscribe(...channels) {
    const now = this._monotonic();
    for (const name of channels.flat()) this._session.add(name, now);
    this._pump();
  }

  /** Drops channels: their state goes at once; no more events come for them. */
  unsubscribe(...channels) {
    const now = this._monotonic();
    for (const name of channels.flat()) this._session.remove(name, now);
    this._pump();
  }

  get channels() {
    return this._session.channels();
  }

  status(channel) {
    const state = this._session.state(channel);
    return state ? state.status : ChannelStatus.CLOSED;
  }

  /** The channel's local Book (updated in place), or null before its snapshot or while resyncing. */
  book(channel) {
    const state = this._session.state(channel);
    return state ? state.book : null;
  }

  /** The channel's last trades, oldest first. */
  trades(channel) {
    const state = this._session.state(channel);
    return state ? [...state.trades] : [];
  }

  /** [epoch, seq] of the channel's state (where it would resume from), or null. */
  position(channel) {
    const state = this._session.state(channel);
    return state ? state.position : null;
  }

  /** A copy of the channel's counters (zeros for a channel not subscribed). */
  counters(channel) {
    const state = this._session.state(channel);
    return state ? { ...state.counters } : newChannelCounters();
  }

  /** A copy of the connection-level counters. */
  get stats() {
    const s = this._session.stats;
    return { ...s, closeCodes: { ...s.closeCodes } };
  }

  get connected() {
    return this._session.connected;
  }

  /** The URL connected to, or to be tried next. */
  get url() {
    return this.urls[this._urlIndex];
  }

  // -- events

  /** Calls `listener(event)` for every event of `type` ("*": all); returns a remover. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    const set = this._listeners.get(type);
    if (set) set.delete(listener);
  }

  _emit(events) {
    for (const event of events) {
      for (const key of [event.type, "*"]) {
        const set = this._listeners.get(key);
        if (!set) continue;
        for (const listener of [...set]) {
          try {
            listener(event);
          } catch (err) {
            this._onListenerError(err); // a listener's bug does not stop the client
          }
        }
      }
    }
  }

  // -- the connection

  _connect() {
    if (this._closed) return;
    const url = this.url;
    this._attempt += 1;
    this._opened = false;
    let ws;
    try {
      const token = typeof this._token === "function" ? this._token() : this._token;
      // Browsers cannot set headers: the token rides in a subprotocol, offered with relay.v1,
      // which is the one the relay answers with (docs/security.md).
      ws = token ? new this._WebSocket(url, ["relay.v1", `bearer.${token}`]) : new this._WebSocket(url);
    } catch (err) {
      this._failed(url, String((err && err.message) || err));
      return;
    }
    this._ws = ws;
    this._connectTimer = this._setTimer(() => {
      this._connectTimer = null;
      if (this._ws === ws && !this._opened) {
        this._detach(ws);
        this._failed(url, "connect timeout");
      }
    }, this._connectTimeout * 1000);
    ws.onopen = () => this._onOpen(ws, url);
    ws.onmessage = (message) => this._onMessage(ws, message);
    ws.onerror = () => {}; // onclose follows and says how it ended
    ws.onclose = (event) => this._onClose(ws, url, event);
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch {
      // not open yet, or already closing
    }
    if (this._ws === ws) this._ws = null;
  }

  _onOpen(ws, url) {
    if (this._ws !== ws || this._closed) return;
    this._opened = true;
    this._clearConnectTimer();
    const attempt = this._attempt;
    this._attempt = 0;
    const opened = this._session.connectionMade(this._monotonic());
    this._settled = this._session.settled(); // no channels: nothing to wait for
    if (this._settled) this._backoff.reset();
    this._lastFrame = this._monotonic();
    this._pingSent = null;
    this._armHeartbeat();
    this._emit([{ type: "connected", url, attempt }, ...opened]);
    this._pump();
  }

  _onMessage(ws, message) {
    if (this._ws !== ws || this._closed) return;
    const now = this._monotonic();
    this._lastFrame = now;
    this._pingSent = null;
    const data = message.data;
    if (typeof data !== "string") return; // the relay sends no binary frames
    const events = this._session.receive(data, now, this._clockUs());
    if (!this._settled && this._session.settled()) {
      this._settled = true;
      this._backoff.reset(); // this connection delivered: start over
    }
    this._emit(events);
    if (this._session.nextDeadline() !== null) this._pump();
  }

  _onClose(ws, url, event) {
    if (this._ws !== ws) return;
    this._ws = null;
    this._ended(url, event && typeof event.code === "number" ? event.code : 1006, (event && event.reason) || "");
  }

  // The connection ended (or never opened): tell, and schedule the next attempt.
  _ended(url, code, reason) {
    this._stopTimers();
    if (this._closed) return;
    if (!this._opened) {
      this._failed(url, reason || "connection failed");
      return;
    }
    this._opened = false;
    reason = reason || REPORTED_CLOSES[code] || "";
    const lost = this._session.connectionLost(code);
    let delay;
    if (code === GOING_AWAY) {
      const hint = RECONNECT_HINT.exec(reason);
      delay = hint ? Math.min(Number(hint[1]) / 1000, MAX_HINT_S) : this._random() * this._goingAwayJitter;
    } else {
      delay = this._backoff.nextDelay();
    }
    this._emit([...lost, { type: "disconnected", url, code, reason, delay }]);
    this._retryLater(delay);
  }

  _failed(url, reason) {
    this._clearConnectTimer();
    this._session.stats.connectFailures += 1;
    const delay = this._backoff.nextDelay();
    this._emit([{ type: "disconnected", url, code: null, reason, delay }]);
    this._retryLater(delay);
  }

  _retryLater(delay) {
    if (this._closed) return;
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    this._retryTimer = this._setTimer(() => {
      this._retryTimer = null;
      this._connect();
    }, delay * 1000);
  }

  // Sends what the session has due, then sleeps until its next deadline.
  _pump() {
    const ws = this._ws;
    if (this._closed || !ws || !this._opened || ws.readyState !== OPEN) return;
    if (this._writeTimer !== null) {
      this._clearTimer(this._writeTimer);
      this._writeTimer = null;
    }
    const now = this._monotonic();
    for (const request of this._session.takeRequests(now)) ws.send(JSON.stringify(request));
    const deadline = this._session.nextDeadline();
    if (deadline !== null) {
      const wait = Math.max(0, deadline - this._monotonic());
      this._writeTimer = this._setTimer(() => {
        this._writeTimer = null;
        this._pump();
      }, wait * 1000);
    }
  }

  // Liveness: after `heartbeat` s without a frame, send a ping; no answer within half: drop.
  _armHeartbeat() {
    if (!this._heartbeat) return;
    const tick = Math.max(0.05, this._heartbeat / 4);
    this._heartbeatTimer = this._setTimer(() => {
      this._heartbeatTimer = null;
      const ws = this._ws;
      if (this._closed || !ws || !this._opened) return;
      const now = this._monotonic();
      if (this._pingSent !== null && now - this._pingSent >= this._heartbeat / 2) {
        this._drop(ws, "no answer to ping");
        return;
      }
      if (this._pingSent === null && now - this._lastFrame >= this._heartbeat && ws.readyState === OPEN) {
        this._pingSent = now;
        this._pings += 1;
        ws.send(JSON.stringify({ op: "ping", id: `hb-${this._pings}` }));
      }
      this._armHeartbeat();
    }, tick * 1000);
  }

  // The connection is dead without a close frame: handle it as the relay dropping it (1006).
  _drop(ws, reason) {
    this._detach(ws);
    this._ended(this.url, 1006, reason);
  }

  _clearConnectTimer() {
    if (this._connectTimer !== null) {
      this._clearTimer(this._connectTimer);
      this._connectTimer = null;
    }
  }

  _stopTimers() {
    this._clearConnectTimer();
    for (const key of ["_writeTimer", "_retryTimer", "_heartbeatTimer"]) {
      if (this[key] !== null) {
        this._clearTimer(this[key]);
        this[key] = null;
      }
    }
  }
}
