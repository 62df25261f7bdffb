// The relay's live book page: a market picker, the order-book ladder, a depth chart, the trades
// tape and a status bar, on top of relay-client.js. No build step, no dependencies.
//
// Frames only change state and set dirty flags; the DOM and the canvas are drawn on animation
// frames (at most once per frame, the depth chart at most 20 times a second, the status bar
// four times a second), so the page stays smooth whatever the message rate.
//
// Query parameters: ?symbol=ETH-USD picks the market; ?ws=ws://host:port/ws[,ws://other/ws]
// points the page at other replicas; ?depth=N is the relay's RELAY_CHECKSUM_DEPTH (default 10).

import { RelayClient } from "./relay-client.js";

const params = new URLSearchParams(location.search);
const scheme = location.protocol === "https:" ? "wss" : "ws";
const urls = (params.get("ws") || `${scheme}://${location.host}/ws`)
  .split(",")
  .map((u) => u.trim())
  .filter(Boolean);
const channelsUrl = params.get("ws")
  ? `${urls[0].replace(/^ws/, "http").replace(/\/ws\/?(\?.*)?$/, "")}/channels`
  : "channels";
const checksumDepth = params.has("depth") ? Number(params.get("depth")) : 10;
const phone = window.matchMedia("(max-width: 700px)");

const TRADES_KEPT = 80;
const DEPTH_LEVELS = 60;

const $ = (id) => document.getElementById(id);
const el = {
  market: $("market"),
  asks: $("asks"),
  bids: $("bids"),
  ladder: $("ladder"),
  mid: $("ladder-mid"),
  spread: $("ladder-spread"),
  bookChannel: $("book-channel"),
  tradesChannel: $("trades-channel"),
  trades: $("trades"),
  depth: $("depth"),
  depthRange: $("depth-range"),
  last: $("t-last"),
  tMid: $("t-mid"),
  tSpread: $("t-spread"),
  tBid: $("t-bid"),
  tAsk: $("t-ask"),
  tLevels: $("t-levels"),
  state: $("status-state"),
  replica: $("status-replica"),
  seq: $("status-seq"),
  rate: $("status-rate"),
  latency: $("status-latency"),
  gaps: $("status-gaps"),
  checksums: $("status-checksums"),
  failures: $("status-checksum-failures"),
  resyncs: $("status-resyncs"),
  reconnects: $("status-reconnects"),
};

// -- state (changed by the client's events; read by the renderers) ------------------------------

const view = {
  symbol: null,
  book: null, // channel names
  trades: null,
  dirtyBook: true,
  dirtyDepth: true,
  tradesReset: true,
  tape: [], // the last trades, oldest first: [trade, ts or null (from the snapshot)]
  pendingTrades: 0, // how many of the newest in `tape` are not drawn yet
  lastTrade: null,
  prevMid: null,
  samples: [], // [receivedMs, latencyMs] of the updates of the last second
  retired: { gaps: 0, checksumFailures: 0, checksumsVerified: 0, resubscribes: 0 },
  connects: 0,
  everConnected: false,
  retryAt: null,
  lastDisconnect: null,
  priceDecimals: 0,
  sizeDecimals: 0,
  perf: { frames: 0, scriptMs: 0, maxMs: 0 }, // frames that drew something, and our time in them
};

// A relay with auth on (docs/security.md): open the page as /#token=<token>. The fragment
// never leaves the browser, so the token is in no request line and no proxy log.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const client = new RelayClient(urls, [], { checksumDepth, tradesKept: TRADES_KEPT, reconnectMax: 5, token });
window.relayPage = { client, view }; // for the console (and the end-to-end test)

client.on("connected", () => {
  view.connects += 1;
  view.everConnected = true;
  view.retryAt = null;
});
client.on("disconnected", (e) => {
  view.retryAt = performance.now() + e.delay * 1000;
  view.lastDisconnect = e.code === null ? e.reason : `${e.code}${e.reason ? ` ${e.reason}` : ""}`;
});
client.on("statusChanged", (e) => {
  if (e.channel === view.book) {
    view.dirtyBook = view.dirtyDepth = true;
  }
});
client.on("bookSnapshot", (e) => {
  if (e.channel !== view.book) return;
  view.dirtyBook = view.dirtyDepth = true;
  learnDecimals(e.book);
});
client.on("bookUpdate", (e) => {
  if (e.channel !== view.book) return;
  view.dirtyBook = view.dirtyDepth = true;
  sample(e);
});
client.on("tradesSnapshot", (e) => {
  if (e.channel !== view.trades) return;
  view.tradesReset = true;
  // A snapshot after a resync or a reconnect repeats trades the tape has: keep their times.
  const seen = new Map(view.tape.map(([t, ts]) => [`${t.id}|${t.price}|${t.size}`, ts]));
  view.tape = e.trades.map((t) => [t, seen.get(`${t.id}|${t.price}|${t.size}`) ?? null]);
  view.pendingTrades = 0;
  if (e.trades.length) view.lastTrade = e.trades[e.trades.length - 1];
});
client.on("tradeUpdate", (e) => {
  if (e.channel !== view.trades) return;
  view.tape.push([e.trade, e.ts]);
  if (view.tape.length > TRADES_KEPT) view.tape.splice(0, view.tape.length - TRADES_KEPT);
  view.pendingTrades += 1;
  view.lastTrade = e.trade;
  sample(e);
});

function sample(event) {
  const at = event.receivedUs / 1000;
  view.samples.push([at, event.latencyUs / 1000]);
  // Trimmed here too: a hidden tab gets no animation frames, and so no status bar renders.
  while (view.samples[0][0] < at - 1000) view.samples.shift();
}

function decimalsOf(text) {
  const dot = text.indexOf(".");
  return dot < 0 ? 0 : text.length - dot - 1;
}

function learnDecimals(book) {
  let price = 0;
  let size = 0;
  for (const [p, s] of [...book.bids(20), ...book.asks(20)]) {
    price = Math.max(price, decimalsOf(p));
    size = Math.max(size, decimalsOf(s));
  }
  view.priceDecimals = Math.min(price, 8);
  view.sizeDecimals = Math.min(size, 8);
}

// -- formatting -----------------------------------------------------------------------------------

/** A decimal string with thousands separators, digits untouched ("43012.5" -> "43,012.5"). */
function groupDigits(text) {
  const dot = text.indexOf(".");
  const whole = dot < 0 ? text : text.slice(0, dot);
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return dot < 0 ? grouped : grouped + text.slice(dot);
}

function fixed(value, decimals) {
  return groupDigits(value.toFixed(decimals));
}

function clock(tsUs) {
  const d = new Date(tsUs / 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setValue(node, value, text = String(value)) {
  setText(node, text);
  const raw = String(value);
  if (node.dataset.value !== raw) node.dataset.value = raw;
}

// -- the market picker ----------------------------------------------------------------------------

async function loadMarkets() {
  let symbols = [];
  try {
    const response = await fetch(channelsUrl, { cache: "no-store" });
    if (response.ok) {
      const rows = await response.json();
      symbols = [...new Set(rows.filter((r) => r.kind === "book").map((r) => r.channel.slice(5)))].sort();
    }
  } catch {
    // the relay is away: keep what we have
  }
  if (!symbols.length) symbols = view.symbol ? [view.symbol] : [params.get("symbol") || "BTC-USD"];
  const current = [...el.market.options].map((o) => o.value);
  if (current.join() !== symbols.join()) {
    el.market.replaceChildren(...symbols.map((s) => new Option(s, s)));
  }
  if (!view.symbol) {
    const wanted = params.get("symbol");
    select(symbols.includes(wanted) ? wanted : symbols.includes("BTC-USD") ? "BTC-USD" : symbols[0]);
  }
  el.market.value = view.symbol;
}

function select(symbol) {
  if (symbol === view.symbol) return;
  if (view.book) {
    for (const channel of [view.book, view.trades]) {
      const c = client.counters(channel);
      view.retired.gaps += c.gaps;
      view.retired.checksumFailures += c.checksumFailures;
      view.retired.checksumsVerified += c.checksumsVerified;
      view.retired.resubscribes += c.resubscribes;
    }
    client.unsubscribe(view.book, view.trades);
  }
  view.symbol = symbol;
  view.book = `book.${symbol}`;
  view.trades = `trades.${symbol}`;
  view.dirtyBook = view.dirtyDepth = view.tradesReset = true;
  view.tape = [];
  view.pendingTrades = 0;
  view.lastTrade = null;
  view.prevMid = null;
  view.samples = [];
  el.market.value = symbol;
  setText(el.bookChannel, view.book);
  setText(el.tradesChannel, view.trades);
  document.title = `${symbol} · relay`;
  const url = new URL(location.href);
  url.searchParams.set("symbol", symbol);
  history.replaceState(null, "", url);
  client.subscribe(view.book, view.trades);
}

el.market.addEventListener("change", () => select(el.market.value));

// -- the ladder -----------------------------------------------------------------------------------

let rowsPerSide = 0;
const ladderRows = { asks: [], bids: [] };

function makeRow() {
  const row = document.createElement("div");
  row.className = "row empty";
  row.innerHTML = '<div class="cum"></div><div class="bar"></div><span class="price">–</span><span class="size"></span><span class="total"></span>';
  return {
    node: row,
    cum: row.children[0],
    bar: row.children[1],
    price: row.children[2],
    size: row.children[3],
    total: row.children[4],
    key: "",
    sizeText: "",
    flash: 0,
    barWidth: "",
    cumWidth: "",
  };
}

function layoutLadder() {
  let wanted;
  if (phone.matches) {
    wanted = 10;
  } else {
    const rowHeight = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--row")) || 20;
    const spread = $("spread-row").offsetHeight + 4;
    wanted = Math.floor((el.ladder.clientHeight - spread) / 2 / rowHeight);
    wanted = Math.max(5, Math.min(40, wanted));
  }
  if (wanted === rowsPerSide) return;
  rowsPerSide = wanted;
  for (const side of ["asks", "bids"]) {
    ladderRows[side] = Array.from({ length: wanted }, makeRow);
    el[side].replaceChildren(...ladderRows[side].map((r) => r.node));
  }
  view.dirtyBook = true;
}

function renderLadder(book) {
  const asks = book ? book.asks(rowsPerSide) : [];
  const bids = book ? book.bids(rowsPerSide) : [];
  let maxSize = 0;
  const cumAsk = [];
  const cumBid = [];
  let total = 0;
  for (const [, s] of asks) {
    const v = Number(s);
    maxSize = Math.max(maxSize, v);
    cumAsk.push((total += v));
  }
  total = 0;
  for (const [, s] of bids) {
    const v = Number(s);
    maxSize = Math.max(maxSize, v);
    cumBid.push((total += v));
  }
  const maxCum = Math.max(cumAsk[cumAsk.length - 1] || 0, cumBid[cumBid.length - 1] || 0);
  // Asks: best at the bottom, next to the spread.
  for (let i = 0; i < rowsPerSide; i++) {
    const row = ladderRows.asks[rowsPerSide - 1 - i];
    paintRow(row, asks[i], cumAsk[i], maxSize, maxCum);
  }
  for (let i = 0; i < rowsPerSide; i++) paintRow(ladderRows.bids[i], bids[i], cumBid[i], maxSize, maxCum);
}

function paintRow(row, level, cum, maxSize, maxCum) {
  if (!level) {
    if (row.key !== "") {
      row.key = row.sizeText = "";
      row.node.className = "row empty";
      row.node.removeAttribute("data-price");
      row.node.removeAttribute("data-size");
      setText(row.price, "–");
      setText(row.size, "");
      setText(row.total, "");
      row.bar.style.width = row.cum.style.width = row.barWidth = row.cumWidth = "0%";
    }
    return;
  }
  const [price, size] = level;
  if (row.key === price && row.sizeText !== size) {
    row.flash ^= 1;
    row.node.className = `row f${row.flash}`;
  } else if (row.key !== price) {
    row.node.className = "row";
    row.node.dataset.price = price;
    setText(row.price, groupDigits(price));
  }
  if (row.sizeText !== size) {
    row.node.dataset.size = size;
    setText(row.size, size);
  }
  row.key = price;
  row.sizeText = size;
  setText(row.total, fixed(cum, view.sizeDecimals));
  const barWidth = `${maxSize ? ((Number(size) / maxSize) * 100).toFixed(1) : 0}%`;
  const cumWidth = `${maxCum ? ((cum / maxCum) * 100).toFixed(1) : 0}%`;
  if (row.barWidth !== barWidth) row.bar.style.width = row.barWidth = barWidth;
  if (row.cumWidth !== cumWidth) row.cum.style.width = row.cumWidth = cumWidth;
}

function renderBook() {
  const book = view.book ? client.book(view.book) : null;
  renderLadder(book);
  const bid = book && book.bestBid();
  const ask = book && book.bestAsk();
  if (bid && ask) {
    const mid = (Number(bid[0]) + Number(ask[0])) / 2;
    const spread = Number(ask[0]) - Number(bid[0]);
    const midText = fixed(mid, view.priceDecimals + 1);
    setText(el.mid, midText);
    const direction = view.prevMid === null || mid === view.prevMid ? el.mid.className.replace("mid", "").trim() : mid > view.prevMid ? "up" : "down";
    el.mid.className = `mid ${direction}`.trim();
    view.prevMid = mid;
    const spreadText = fixed(spread, view.priceDecimals);
    setText(el.spread, `spread ${spreadText} · ${((spread / mid) * 1e4).toFixed(2)} bp`);
    setText(el.tMid, midText);
    setText(el.tSpread, spreadText);
    setText(el.tBid, groupDigits(bid[0]));
    setText(el.tAsk, groupDigits(ask[0]));
    setText(el.tLevels, `${book.bidCount} / ${book.askCount}`);
  } else {
    setText(el.mid, "–");
    setText(el.spread, view.book ? `waiting for ${view.book}` : "spread –");
    for (const node of [el.tMid, el.tSpread, el.tBid, el.tAsk, el.tLevels]) setText(node, "–");
  }
  const last = view.lastTrade;
  setText(el.last, last ? groupDigits(last.price) : "–");
  el.last.className = last ? (last.side === "buy" ? "up" : "down") : "";
}

// -- the trades tape ------------------------------------------------------------------------------

function tradeRow(trade, ts, fresh) {
  const row = document.createElement("div");
  const side = trade.side === "sell" ? "sell" : "buy";
  row.className = `trade ${side}${fresh ? " new" : ""}`;
  row.dataset.price = trade.price;
  row.dataset.side = trade.side;
  row.dataset.id = trade.id;
  const price = document.createElement("span");
  price.className = "price";
  price.textContent = groupDigits(trade.price);
  const size = document.createElement("span");
  size.textContent = trade.size;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = ts ? clock(ts) : "earlier";
  row.append(price, size, time);
  return row;
}

let tapeMax = 10; // rows the tape shows: set on layout, not read from the DOM per frame

function tapeRows() {
  const rowHeight = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--row")) || 20;
  return phone.matches ? 14 : Math.max(5, Math.floor(el.trades.clientHeight / rowHeight));
}

function renderTrades() {
  const max = tapeMax;
  const fresh = view.tradesReset ? 0 : Math.min(view.pendingTrades, max);
  const tape = view.tape;
  if (view.tradesReset) {
    view.tradesReset = false;
    const rows = tape.slice(-max).reverse().map(([t, ts]) => tradeRow(t, ts, false));
    el.trades.replaceChildren(...rows);
  } else if (fresh) {
    const fragment = document.createDocumentFragment();
    for (let i = tape.length - 1; i >= tape.length - fresh; i--) fragment.append(tradeRow(tape[i][0], tape[i][1], true));
    el.trades.prepend(fragment);
  }
  view.pendingTrades = 0;
  while (el.trades.childElementCount > max) el.trades.lastElementChild.remove();
}

// -- the depth chart ------------------------------------------------------------------------------

const depth = { ctx: el.depth.getContext("2d"), width: 0, height: 0, ratio: 1, hover: null, model: null };

function sizeCanvas() {
  const ratio = window.devicePixelRatio || 1;
  const width = el.depth.clientWidth;
  const height = el.depth.clientHeight;
  if (width === depth.width && height === depth.height && ratio === depth.ratio) return;
  Object.assign(depth, { width, height, ratio });
  el.depth.width = Math.max(1, Math.round(width * ratio));
  el.depth.height = Math.max(1, Math.round(height * ratio));
  view.dirtyDepth = true;
}

function cumulate(levels) {
  let total = 0;
  return levels.map(([p, s]) => [Number(p), (total += Number(s))]);
}

function renderDepth() {
  const { ctx, width: w, height: h, ratio } = depth;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const book = view.book ? client.book(view.book) : null;
  if (!book || !book.bidCount || !book.askCount || w < 40 || h < 40) {
    depth.model = null;
    ctx.fillStyle = "#7d8794";
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(view.book ? "waiting for the book…" : "", w / 2, h / 2);
    return;
  }
  const bids = cumulate(book.bids(DEPTH_LEVELS));
  const asks = cumulate(book.asks(DEPTH_LEVELS));
  const mid = (bids[0][0] + asks[0][0]) / 2;
  const range = Math.min(mid - bids[bids.length - 1][0], asks[asks.length - 1][0] - mid) || 1;
  const lo = mid - range;
  const hi = mid + range;
  const inRange = (side, inside) => side.filter(([p]) => inside(p));
  const b = inRange(bids, (p) => p >= lo);
  const a = inRange(asks, (p) => p <= hi);
  const top = Math.max(b.length ? b[b.length - 1][1] : 0, a.length ? a[a.length - 1][1] : 0) * 1.12 || 1;
  const pad = { l: 8, r: 56, t: 12, b: 22 };
  const plotW = w - pad.l - pad.r;
  const plotH = h - pad.t - pad.b;
  const x = (p) => pad.l + ((p - lo) / (hi - lo)) * plotW;
  const y = (v) => pad.t + plotH - (v / top) * plotH;
  depth.model = { lo, hi, top, pad, plotW, plotH, bids: b, asks: a, mid };

  // grid and axes, on round numbers
  ctx.strokeStyle = "#1f262e";
  ctx.lineWidth = 1;
  ctx.fillStyle = "#7d8794";
  ctx.font = "10px ui-monospace, 'DejaVu Sans Mono', monospace";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  const yStep = niceStep(top, h < 260 ? 3 : 5);
  for (let v = yStep; v < top; v += yStep) {
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.l, yy);
    ctx.lineTo(pad.l + plotW, yy);
    ctx.stroke();
    ctx.fillText(fixed(v, stepDecimals(yStep)), pad.l + plotW + 6, yy);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const xStep = niceStep(hi - lo, w < 420 ? 3 : 6);
  for (let p = Math.ceil(lo / xStep) * xStep; p <= hi; p += xStep) {
    const xx = Math.round(x(p)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(xx, pad.t + plotH);
    ctx.lineTo(xx, pad.t + plotH + 4);
    ctx.stroke();
    const label = fixed(p, stepDecimals(xStep));
    const half = ctx.measureText(label).width / 2;
    const fits = xx - half >= 0 && xx + half <= pad.l + plotW + pad.r / 2;
    if (fits && Math.abs(p - mid) > xStep / 3) ctx.fillText(label, xx, pad.t + plotH + 6);
  }

  drawSide(ctx, b, x, y, pad.t + plotH, "22, 199, 132", x(lo));
  drawSide(ctx, a, x, y, pad.t + plotH, "246, 70, 93", x(hi));

  // the mid line
  ctx.setLineDash([3, 3]);
  ctx.strokeStyle = "rgba(230, 232, 235, 0.35)";
  ctx.beginPath();
  ctx.moveTo(Math.round(x(mid)) + 0.5, pad.t);
  ctx.lineTo(Math.round(x(mid)) + 0.5, pad.t + plotH);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = "#e6e8eb";
  ctx.textBaseline = "top";
  ctx.fillText(fixed(mid, view.priceDecimals + 1), x(mid), pad.t - 10 < 0 ? 0 : pad.t - 10);

  setText(el.depthRange, `±${fixed(range, view.priceDecimals)} · ${b.length}/${a.length} levels`);
  if (depth.hover) drawHover(ctx, x, y);
}

/** A round step (1, 2 or 5 times a power of ten) that cuts `span` in about `count` parts. */
function niceStep(span, count) {
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const n = raw / magnitude;
  return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * magnitude;
}

function stepDecimals(step) {
  return step >= 1 ? 0 : Math.min(8, Math.ceil(-Math.log10(step) - 1e-9));
}

// A step area from the best price outwards: cumulative size stays flat until the next level.
function drawSide(ctx, points, x, y, base, rgb, edge) {
  if (!points.length) return;
  ctx.beginPath();
  ctx.moveTo(x(points[0][0]), base);
  let prev = 0;
  for (const [p, cum] of points) {
    ctx.lineTo(x(p), y(prev));
    ctx.lineTo(x(p), y(cum));
    prev = cum;
  }
  ctx.lineTo(edge, y(prev));
  ctx.strokeStyle = `rgb(${rgb})`;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.lineTo(edge, base);
  ctx.closePath();
  const gradient = ctx.createLinearGradient(0, y(prev), 0, base);
  gradient.addColorStop(0, `rgba(${rgb}, 0.35)`);
  gradient.addColorStop(1, `rgba(${rgb}, 0.04)`);
  ctx.fillStyle = gradient;
  ctx.fill();
}

function drawHover(ctx, x, y) {
  const m = depth.model;
  const px = depth.hover;
  if (!m || px < m.pad.l || px > m.pad.l + m.plotW) return;
  const price = m.lo + ((px - m.pad.l) / m.plotW) * (m.hi - m.lo);
  const side = price < m.mid ? m.bids : m.asks;
  let cum = 0;
  for (const [p, c] of side) {
    if (price < m.mid ? p >= price : p <= price) cum = c;
  }
  ctx.strokeStyle = "rgba(230, 232, 235, 0.5)";
  ctx.beginPath();
  ctx.moveTo(Math.round(px) + 0.5, m.pad.t);
  ctx.lineTo(Math.round(px) + 0.5, m.pad.t + m.plotH);
  ctx.stroke();
  const label = `${fixed(price, view.priceDecimals)}  Σ ${fixed(cum, view.sizeDecimals)}`;
  ctx.font = "11px ui-monospace, 'DejaVu Sans Mono', monospace";
  const tw = ctx.measureText(label).width + 12;
  const bx = Math.min(Math.max(px - tw / 2, m.pad.l), m.pad.l + m.plotW - tw);
  ctx.fillStyle = "rgba(24, 29, 35, 0.92)";
  ctx.fillRect(bx, m.pad.t + 4, tw, 18);
  ctx.fillStyle = price < m.mid ? "#16c784" : "#f6465d";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(label, bx + 6, m.pad.t + 13);
}

el.depth.addEventListener("pointermove", (e) => {
  depth.hover = e.offsetX;
  view.dirtyDepth = true;
});
el.depth.addEventListener("pointerleave", () => {
  depth.hover = null;
  view.dirtyDepth = true;
});

// -- the status bar -------------------------------------------------------------------------------

function totals() {
  const t = { ...view.retired };
  for (const channel of [view.book, view.trades]) {
    if (!channel) continue;
    const c = client.counters(channel);
    t.gaps += c.gaps;
    t.checksumFailures += c.checksumFailures;
    t.checksumsVerified += c.checksumsVerified;
    t.resubscribes += c.resubscribes;
  }
  return t;
}

function renderStatus(now) {
  let state;
  let text;
  if (!client.connected) {
    state = view.everConnected ? "reconnecting" : "connecting";
    const wait = view.retryAt === null ? 0 : Math.max(0, (view.retryAt - now) / 1000);
    text = wait > 0.05 ? `${state} · ${wait.toFixed(1)} s` : state;
  } else {
    state = view.book ? client.status(view.book) : "connected";
    text = state;
  }
  if (el.state.dataset.state !== state) el.state.dataset.state = state;
  setText(el.state.lastElementChild, text);
  el.state.title = view.lastDisconnect ? `last disconnect: ${view.lastDisconnect}` : "";

  let host = "–";
  try {
    host = client.connected ? new URL(client.url).host : "–";
  } catch {
    host = client.url;
  }
  setText(el.replica, host);

  const position = view.book ? client.position(view.book) : null;
  setValue(el.seq, position ? position[1] : 0, position ? String(position[1]) : "–");

  const horizon = performance.timeOrigin + now - 1000;
  while (view.samples.length && view.samples[0][0] < horizon) view.samples.shift();
  setValue(el.rate, view.samples.length);
  if (view.samples.length) {
    let sum = 0;
    let max = 0;
    for (const [, latency] of view.samples) {
      sum += latency;
      max = Math.max(max, latency);
    }
    setText(el.latency, `${(sum / view.samples.length).toFixed(1)} ms · max ${max.toFixed(1)}`);
  } else {
    setText(el.latency, "–");
  }

  const t = totals();
  setValue(el.gaps, t.gaps);
  el.gaps.className = t.gaps ? "bad" : "";
  setValue(el.checksums, t.checksumsVerified);
  el.checksums.className = t.checksumsVerified ? "good" : "";
  setValue(el.failures, t.checksumFailures);
  el.failures.className = t.checksumFailures ? "bad" : "";
  setValue(el.resyncs, t.resubscribes);
  setValue(el.reconnects, Math.max(0, view.connects - 1));
}

// -- the frame loop -------------------------------------------------------------------------------

let lastDepth = 0;
let lastStatus = -1e9;

function frame(now) {
  const started = performance.now();
  let drew = false;
  if (view.dirtyBook) {
    view.dirtyBook = false;
    renderBook();
    drew = true;
  }
  if (view.tradesReset || view.pendingTrades) {
    renderTrades();
    drew = true;
  }
  if (view.dirtyDepth && now - lastDepth >= 50) {
    view.dirtyDepth = false;
    lastDepth = now;
    renderDepth();
    drew = true;
  }
  if (now - lastStatus >= 250) {
    lastStatus = now;
    renderStatus(now);
  }
  if (drew) {
    const spent = performance.now() - started;
    view.perf.frames += 1;
    view.perf.scriptMs += spent;
    view.perf.maxMs = Math.max(view.perf.maxMs, spent);
  }
  requestAnimationFrame(frame);
}

function relayout() {
  layoutLadder();
  tapeMax = tapeRows();
  sizeCanvas();
  view.tradesReset = true; // the tape may hold more or fewer rows now
}

window.addEventListener("resize", relayout);
phone.addEventListener("change", relayout);
new ResizeObserver(sizeCanvas).observe(el.depth);
relayout();
client.start();
loadMarkets();
setInterval(loadMarkets, 15000);
requestAnimationFrame(frame);
