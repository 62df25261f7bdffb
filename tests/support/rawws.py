"""A bare-socket WebSocket client, for peers a real library would not imitate: one that
never reads (a tiny receive buffer, no reads at all), one that reads raw frames, or one
that sends frames no library would (any opcode, fragments, RSV bits, invalid UTF-8)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class RawFrame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return (
            struct.unpack("!H", self.payload[:2])[0]
            if self.opcode == 8 and len(self.payload) >= 2
            else None
        )


async def open_socket(
    host: str, port: int, rcvbuf: int | None = None, limit: int = 1024
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock, limit=limit)


def upgrade_request(
    host: str, port: int, path: str = "/ws", headers: Mapping[str, str] | None = None
) -> bytes:
    """The bytes of a WebSocket upgrade request, with extra ``headers``."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names lowercased


async def refused_upgrade(
    host: str, port: int, headers: Mapping[str, str] | None = None, raw: bytes | None = None
) -> HttpAnswer:
    """Send an upgrade request (or ``raw`` bytes) and read the HTTP answer's head."""
    reader, writer = await open_socket(host, port, limit=1 << 16)
    try:
        writer.write(raw if raw is not None else upgrade_request(host, port, "/ws", headers))
        head = (await reader.readuntil(b"\r\n\r\n")).decode(errors="replace")
    finally:
        writer.close()
    status_line, *lines = head.strip().split("\r\n")
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return HttpAnswer(
        int(status_line.split()[1]), {k.strip().lower(): v.strip() for k, v in fields.items()}
    )


def frame_bytes(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One masked client frame, any opcode, FIN and RSV1 as given."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + mask + masked


class RawClient:
    response_head = ""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/ws",
        rcvbuf: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawClient:
        reader, writer = await open_socket(host, port, rcvbuf)
        writer.write(upgrade_request(host, port, path, headers))
        status = await reader.readuntil(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(status.decode(errors="replace"))
        client = cls(reader, writer)
        client.response_head = status.decode(errors="replace")
        return client

    async def send_text(self, text: str) -> None:
        await self.send_frame(0x1, text.encode())

    async def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False
    ) -> None:
        self.writer.write(frame_bytes(opcode, payload, fin=fin, rsv1=rsv1))
        await self.writer.drain()

    async def read_until_close(self) -> RawFrame:
        """Skip frames until the close frame, and return it."""
        while True:
            frame = await self.read_frame()
            if frame.opcode == 8:
                return frame

    async def read_frame(self) -> RawFrame:
        first, second = await self.reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return RawFrame(first & 0x0F, await self.reader.readexactly(n))

    def close(self) -> None:
        self.writer.close()
