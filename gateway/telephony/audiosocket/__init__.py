"""Asterisk AudioSocket: a TCP listener, no WebSocket (codec.py, stream.py; docs/protocols.md
"Asterisk AudioSocket").

Off unless `audiosocket.port` (or GATEWAY_AUDIOSOCKET_PORT) is set; bound to `audiosocket.host`
(127.0.0.1 by default) and serving only peers in `audiosocket.allow`. The bot: `audiosocket.bots`
maps a UUID to a bot (a dialplan with a fixed UUID per extension chooses the bot that way; such
calls get a per-call suffix on the UUID as their id), else the default bot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .. import L16, PhoneStream
from ..network import ListenFailed, NetworkSpec
from .codec import AudioSocketCodec
from .stream import AudioSocketStream

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class AudioSocketConfig:
    port: int = 0  # 0: no AudioSocket listener (GATEWAY_AUDIOSOCKET_PORT)
    host: str = "127.0.0.1"
    allow: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])  # peer addresses or networks served
    bots: dict[str, str] = field(default_factory=dict)  # the dialplan's AudioSocket UUID -> bot


def peer_allowed(host: str, allow: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in allow:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


class AudioSocket(NetworkSpec):
    name, label = "audiosocket", "AudioSocket"
    settings = AudioSocketConfig
    env = {"GATEWAY_AUDIOSOCKET_PORT": "port"}
    checks = (("port", lambda s: 0 <= s.port <= 65535, "0..65535 (0: off)"),)
    formats = ((L16, 8000),)
    formats_wanted = "signed linear 8 kHz (AudioSocket 0x10)"

    def finish_settings(self, settings: AudioSocketConfig, bots, where: str) -> AudioSocketConfig:
        """`bots` keys as Asterisk sends them (any spelling of a UUID matches its 16 bytes)."""
        mapped = {}
        for key, bot in settings.bots.items():
            try:
                mapped[str(uuid.UUID(key))] = bot
            except ValueError:
                raise ValueError(f"{where}.bots: {key!r} is not a UUID") from None
            if bot not in bots:
                raise ValueError(f"{where}.bots.{key}: no bot {bot!r} (have: {', '.join(sorted(bots)) or 'none'})")
        return AudioSocketConfig(settings.port, settings.host, settings.allow, mapped)

    def startup_warnings(self, config) -> list[str]:
        settings = config.audiosocket
        if settings.port and settings.host not in ("127.0.0.1", "::1", "localhost"):
            return [f"event=audiosocket_exposed note=\"AudioSocket on {settings.host}: only peers in "
                    f"audiosocket.allow ({', '.join(settings.allow) or 'none'}) are served\""]
        return []

    async def listen(self, config, handle: Callable[[PhoneStream], Awaitable[None]], make_log):
        """The TCP listener when `audiosocket.port` is set: each allowed connection becomes a stream."""
        settings = config.audiosocket
        if not settings.port:
            return None

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) else ""
            if not peer_allowed(host, settings.allow):
                log.warning("event=stream_rejected network=audiosocket reason=\"peer not in audiosocket.allow\" "
                            "remote=%s", host)
                writer.close()
                return
            stream = AudioSocketStream(reader, writer, make_log(), config.limits.max_protocol_errors, settings.bots)
            try:
                await handle(stream)
            finally:
                await stream.close()

        try:
            server = await asyncio.start_server(connected, settings.host, settings.port)
        except OSError as e:
            raise ListenFailed(settings.host, settings.port, e) from None
        log.info("event=audiosocket_listening address=%s:%d allow=%s", settings.host, settings.port,
                 ",".join(settings.allow))
        return server

    def codec(self, query) -> AudioSocketCodec:
        return AudioSocketCodec(dict(query).get("bots") or {})

    def fake_caller(self) -> type:
        from .fake import AudioSocketCaller
        return AudioSocketCaller


SPEC = AudioSocket()
