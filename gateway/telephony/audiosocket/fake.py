"""Asterisk's side of an AudioSocket call, for the simulator: no webhook (the dialplan's
`AudioSocket(uuid,host:port)`), a TCP connection that sends the UUID (a bot's fixed UUID when the
phone asks for one: map it in audiosocket.bots), 0x10 audio of 20 ms, 0x03 digits and 0x00 to hang
up; checks ours: 0x10 audio of exactly 320 bytes and 0x00. No marks: the gateway paces."""

from __future__ import annotations

import asyncio
import uuid

from ..fake import FakeCaller
from .codec import AUDIO, DTMF, FRAME_BYTES, HANGUP, UUID, message


def bot_uuid(bot: str) -> uuid.UUID:
    """The AudioSocket UUID the simulated dialplan uses for `bot` (map it in audiosocket.bots)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"gateway-bot:{bot}")


class AudioSocketCaller(FakeCaller):
    network = "audiosocket"
    transport = "tcp"
    pcm = True
    jitter_frames = 2  # audio arrives paced, with jitter: Asterisk's player waits for a second frame

    def __init__(self, phone, sample_rate: int = 8000):
        super().__init__(phone, 8000)

    def call_id(self, bot):
        return str(bot_uuid(bot) if bot else uuid.uuid4())

    def stream_id(self, call_id):
        return call_id

    async def dial(self) -> None:
        phone = self.phone
        phone.result.stream_url = phone.base_url
        phone.result.parameters = {"bot": phone.bot} if phone.bot else {}

    def start(self, params):
        return message(UUID, uuid.UUID(self.phone.call_sid).bytes)

    def media(self, audio, chunk, ts_ms):
        return message(AUDIO, audio)

    def dtmf(self, digit):
        return message(DTMF, digit.encode("ascii"))

    def stop(self):
        return [message(HANGUP)]

    async def read_tcp(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readexactly(3)
            return head + await reader.readexactly(int.from_bytes(head[1:], "big"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return None

    def read(self, data, binary):
        kind, payload = data[0], data[3:]
        if kind == HANGUP:
            return [("hangup",)]
        if kind != AUDIO:
            self.violation(f"AudioSocket message type 0x{kind:02x} from the gateway (Asterisk takes audio and hang-up)")
            return []
        if len(payload) != FRAME_BYTES:
            self.violation(f"AudioSocket audio of {len(payload)} bytes (20 ms is {FRAME_BYTES})")
        return [("audio", payload)]
