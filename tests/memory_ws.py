"""An in-memory WebSocket: the gateway's end speaks aiohttp's server API (receive, send_frame,
close, exception), the phone's end its client API (send_str, send_bytes, async iteration, close).
Frames cross in order and at once, on the event loop's clock, so a whole network path — the
network's codec, the shared stream loop, the call core and the network's fake caller — runs on
looptime's fast-forwarded clock without a socket."""

from __future__ import annotations

import asyncio

from aiohttp import WSMessage, WSMsgType

_CLOSED = WSMessage(WSMsgType.CLOSED, None, None)


class _End:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[WSMessage] = asyncio.Queue()
        self.peer: _End
        self.closed = False
        self.close_code: int | None = None
        self.protocol: str | None = None

    def _deliver(self, msg: WSMessage) -> None:
        if not self.closed:
            self.inbox.put_nowait(msg)

    async def _close(self, code: int) -> None:
        for end in (self, self.peer):
            if not end.closed:
                end.close_code = code
                end.inbox.put_nowait(_CLOSED)
                end.closed = True


class GatewayEnd(_End):
    """What WsPhoneStream uses (aiohttp's WebSocketResponse)."""

    async def receive(self) -> WSMessage:
        return await self.inbox.get()

    async def send_frame(self, data: bytes, opcode: WSMsgType) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.peer._deliver(WSMessage(opcode, data.decode() if opcode == WSMsgType.TEXT else data, None))

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        await self._close(code)

    def exception(self) -> BaseException | None:
        return None


class PhoneEnd(_End):
    """What the simulated phone uses (aiohttp's ClientWebSocketResponse)."""

    async def send_str(self, data: str) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.peer._deliver(WSMessage(WSMsgType.TEXT, data, None))

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.peer._deliver(WSMessage(WSMsgType.BINARY, data, None))

    async def close(self, code: int = 1000) -> None:
        await self._close(code)

    def __aiter__(self):
        return self

    async def __anext__(self) -> WSMessage:
        msg = await self.inbox.get()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return msg


def ws_pair() -> tuple[GatewayEnd, PhoneEnd]:
    gateway, phone = GatewayEnd(), PhoneEnd()
    gateway.peer, phone.peer = phone, gateway
    return gateway, phone
