"""baseline: the smallest correct raw fanout, the practical limit for Python.

An asyncio Protocol on uvloop with its own WebSocket handshake and frame parser, one
XREAD loop over every channel's stream, every update frame built once (the relay's exact
wire format: ``{"type":"update","channel":...,"seq":...,"ts":...,"data":<producer bytes>}``),
and one write per client per read batch. A client whose unsent bytes pass the high-water
mark gets close 4000 and is dropped (aborted 5 s later if it does not read its close).

What it leaves out, on purpose: no book is kept, so the ``snapshot`` sent after
``subscribed`` is minimal (epoch, seq and ts of the last update, ``data: {}``); no resume,
no seq or epoch checks (it relays what is in the stream), no metrics, no rate limits,
no pings, no fragmented client frames.

    python scripts/bench/targets/baseline.py --port 8001 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import signal
import struct
from typing import Any

import orjson
import redis.asyncio as aioredis
import uvloop

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HIGH_WATER = 4 * 2**20
MAX_CLIENT_FRAME = 4096


def ws_text(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def ws_close(code: int, reason: bytes = b"") -> bytes:
    body = struct.pack("!H", code) + reason[:123]
    return bytes((0x88, len(body))) + body


def unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


class Channel:
    __slots__ = ("epoch", "key", "last_id", "name", "name_bytes", "seq", "subscribers", "ts")

    def __init__(self, name: str) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.key = f"md:{{{name}}}".encode()
        self.epoch = ""
        self.seq = 0
        self.ts = 0
        self.last_id = b"0-0"
        self.subscribers: dict[Client, None] = {}


class Client(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.closed = False
        self.subscriptions: set[Channel] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.clients.add(self)
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded and not self._handshake():
            return
        self._frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop()
        self.server.clients.discard(self)

    def drop(self) -> None:
        self.closed = True
        for channel in self.subscriptions:
            channel.subscribers.pop(self, None)
        self.subscriptions.clear()

    # -- HTTP upgrade ------------------------------------------------------------------

    def _handshake(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self._http_error(b"431 Request Header Fields Too Large")
            return False
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        parts = head[0].split(" ")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key")
        if parts[0] != "GET" or parts[1].split("?")[0] != "/ws" or key is None:
            self._http_error(b"404 Not Found")
            return False
        if "websocket" not in headers.get("upgrade", "").lower():
            self._http_error(b"400 Bad Request")
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.upgraded = True
        return True

    def _http_error(self, status: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        self.transport.close()
        self.closed = True

    # -- client frames -----------------------------------------------------------------

    def _frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2 and not self.closed:
            b0, b1 = buf[0], buf[1]
            opcode = b0 & 0x0F
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return None
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return None
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if not b1 & 0x80 or not b0 & 0x80:  # clients must mask; no fragments here
                return self.close(1002, b"masked, unfragmented frames only")
            if n > MAX_CLIENT_FRAME:
                return self.close(1009, b"frame too large")
            if len(buf) < pos + 4 + n:
                return None
            mask = bytes(buf[pos : pos + 4])
            payload = unmask(bytes(buf[pos + 4 : pos + 4 + n]), mask)
            del buf[: pos + 4 + n]
            if opcode == 0x1:
                self._request(payload)
            elif opcode == 0x9:  # ping
                self.send(bytes((0x8A, len(payload))) + payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
                return self.close(code if code < 5000 else 1002)
            elif opcode == 0x2:
                self.send_json(
                    {
                        "type": "error",
                        "id": None,
                        "code": "binary_not_supported",
                        "message": "frames must be JSON text",
                    }
                )
        return None

    def _request(self, payload: bytes) -> None:
        try:
            request = orjson.loads(payload)
            op, name, rid = request.get("op"), request.get("channel"), request.get("id")
        except (orjson.JSONDecodeError, AttributeError):
            self.send_json(
                {
                    "type": "error",
                    "id": None,
                    "code": "invalid_json",
                    "message": "not a JSON object",
                }
            )
            return
        channel = self.server.channels.get(name) if isinstance(name, str) else None
        if op == "ping":
            self.send_json({"type": "pong", "id": rid})
        elif op not in ("subscribe", "unsubscribe"):
            self.send_json(
                {"type": "error", "id": rid, "code": "unknown_op", "message": f"unknown op: {op}"}
            )
        elif channel is None:
            self.send_json(
                {
                    "type": "error",
                    "id": rid,
                    "code": "unknown_channel",
                    "message": f"no such channel: {name}",
                }
            )
        elif op == "subscribe":
            # Answer and join with no await in between: nothing is missed or sent twice.
            subscribed = {
                "type": "subscribed",
                "id": rid,
                "channel": channel.name,
                "epoch": channel.epoch,
                "seq": channel.seq,
            }
            snapshot = {
                "type": "snapshot",
                "channel": channel.name,
                "epoch": channel.epoch,
                "seq": channel.seq,
                "ts": channel.ts,
                "data": {},
            }
            self.send(ws_text(orjson.dumps(subscribed)) + ws_text(orjson.dumps(snapshot)))
            channel.subscribers[self] = None
            self.subscriptions.add(channel)
        else:
            channel.subscribers.pop(self, None)
            self.subscriptions.discard(channel)
            self.send_json({"type": "unsubscribed", "id": rid, "channel": channel.name})

    # -- writing -------------------------------------------------------------------------

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(ws_text(orjson.dumps(message)))

    def send(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None:
            return
        transport.write(data)
        if transport.get_write_buffer_size() > HIGH_WATER:
            self.close(4000, b"slow consumer")

    def send_many(self, chunks: list[bytes]) -> None:
        transport = self.transport
        if self.closed or transport is None:
            return
        transport.writelines(chunks)
        if transport.get_write_buffer_size() > HIGH_WATER:
            self.close(4000, b"slow consumer")

    def close(self, code: int, reason: bytes = b"") -> None:
        transport = self.transport
        self.drop()
        if transport is None or transport.is_closing():
            return
        transport.write(ws_close(code, reason))
        transport.close()
        asyncio.get_running_loop().call_later(5, transport.abort)


class Server:
    def __init__(self, redis_url: str, channels: list[str]) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, protocol=2)
        self.channel_names = channels
        self.channels: dict[str, Channel] = {}
        self.clients: set[Client] = set()

    async def load(self) -> None:
        names = self.channel_names
        if not names:
            found = set()
            async for key in self.redis.scan_iter(match="md:{*}", count=1000, _type="stream"):
                found.add(key.decode()[4:-1])
            names = sorted(found)
        for name in names:
            channel = Channel(name)
            epoch = await self.redis.hget(f"md:{{{name}}}:meta", "epoch")
            channel.epoch = epoch.decode() if epoch else ""
            last = await self.redis.xrevrange(channel.key, count=1)
            if last:
                channel.last_id = last[0][0]
                channel.seq = int(last[0][1][b"seq"])
                channel.ts = int(last[0][1][b"ts"])
            self.channels[name] = channel

    async def read_loop(self) -> None:
        by_key = {ch.key: ch for ch in self.channels.values()}
        redis = self.redis
        while True:
            streams = {ch.key: ch.last_id for ch in by_key.values()}
            batch = await redis.xread(streams, count=1000, block=1000)
            if not batch:
                continue
            due: dict[Client, list[bytes]] = {}
            for key, entries in batch:
                channel = by_key[key]
                name = channel.name_bytes
                frames = []
                for entry_id, fields in entries:
                    seq, ts = fields[b"seq"], fields[b"ts"]
                    frames.append(
                        ws_text(
                            b'{"type":"update","channel":"%s","seq":%s,"ts":%s,"data":%s}'
                            % (name, seq, ts, fields[b"data"])
                        )
                    )
                    channel.last_id = entry_id
                channel.seq, channel.ts = int(seq), int(ts)
                chunk = b"".join(frames)
                for client in channel.subscribers:
                    pending = due.get(client)
                    if pending is None:
                        due[client] = [chunk]
                    else:
                        pending.append(chunk)
            for client, chunks in due.items():
                if len(chunks) == 1:
                    client.send(chunks[0])
                else:
                    client.send_many(chunks)


async def main(args: argparse.Namespace) -> None:
    server = Server(args.redis, [c for c in args.channels.split(",") if c])
    await server.load()
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: Client(server), args.host, args.port, backlog=4096, reuse_address=True
    )
    reader = asyncio.create_task(server.read_loop())
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    listener.close()
    reader.cancel()
    for client in list(server.clients):
        client.close(1001, b"shutting down")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await asyncio.gather(reader, return_exceptions=True)
            await server.redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--channels", default="", help="comma-separated; empty = scan md:{*}")
    uvloop.run(main(parser.parse_args()))
