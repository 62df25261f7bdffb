"""A bare-socket WebSocket client, for peers a real library would not imitate: one that
never reads (a tiny receive buffer, no reads at all), or one that reads raw frames."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
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


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str = "/ws", rcvbuf: int | None = None
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status = await reader.readuntil(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(status.decode(errors="replace"))
        return cls(reader, writer)

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        head = (
            struct.pack("!BB", 0x81, 0x80 | n)
            if n < 126
            else struct.pack("!BBH", 0x81, 0x80 | 126, n)
        )
        self.writer.write(head + mask + masked)
        await self.writer.drain()

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
