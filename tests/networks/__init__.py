"""Each network's test profile, one module per network (`tests/networks/<network>.py`, a PROFILE):
what the network-neutral matrix (test_call_networks.py) needs to call the gateway through it — its
secrets as environment variables, its fake REST API if it has one, how the phone signs, how a
hang-up shows, which faults to send, and what the network does and does not do (marks, transfers,
the dialed number). A network in the registry without a profile here fails the matrix by name."""

from __future__ import annotations

import importlib
import json
from typing import Any

from gateway.phone_sim import SimulatedPhone
from tests.phone_helpers import OPEN_PHONES

JSON_JUNK = ["not json", "[1]", '{"event": "teleport"}']


class Profile:
    name = ""
    has_marks = True  # the network echoes our marks (else the stream emulates them: no marks on the wire)
    min_marks = 15  # marks in a 1.5 s greeting: one per 100 ms chunk
    transfer_label = ""  # "" the network transfers; else the name the refusal says ("not supported on X")
    knows_dialed = True  # the stream tells the dialed number (AudioSocket: a UUID only)
    sends_binary_audio = False  # binary frames are audio (a stray binary frame is then not a fault)
    text_frames = True  # the network speaks JSON text (AudioSocket does not)

    def __init__(self) -> None:
        self.rest: Any = None

    async def start(self, tmp_path, fake_rest) -> None:
        """Start what the network needs besides the gateway (its fake REST API)."""

    async def stop(self) -> None:
        if self.rest is not None and hasattr(self.rest, "stop"):
            await self.rest.stop()

    def env(self) -> dict:
        return {}

    async def gateway(self, make_gateway, **kw):
        return await make_gateway(env=self.env(), **kw)

    def phone_kwargs(self) -> dict:
        return {}

    def phone(self, gw_url: str, bot: str | None = None, **kw) -> SimulatedPhone:
        phone = SimulatedPhone(gw_url, bot=bot, network=self.name, **{**self.phone_kwargs(), **kw})
        OPEN_PHONES.append(phone)
        return phone

    async def dial(self, gw_url: str, bot: str | None = None, **kw) -> SimulatedPhone:
        phone = self.phone(gw_url, bot, **kw)
        await phone.dial()
        await phone.connect()
        return phone

    def hang_ups(self, phone) -> list[tuple[str, float]]:
        """(call id, when) of every hang-up the network got: its REST API's, else the gateway closing the socket."""
        if self.rest is None:
            closed = phone.result.closed_by == "gateway" and phone.result.closed_at
            return [(phone.call_sid, phone.result.closed_at)] if closed else []
        return [(r.call_id, r.at) for r in self.rest.requests if r.action == "hangup"]

    def check_transfer(self, phone) -> None:
        raise NotImplementedError

    def bad_frames(self, phone) -> list[str | bytes]:
        """The same faults in this network's spelling: a media frame that is not base64, a mark without a
        name, a frame of another stream, …"""
        raise NotImplementedError


def family_faults(phone, sid_field: str, mark: dict | None = None, other_stream: bool = True) -> list[str]:
    """Bad frames of the Twilio-like family (Twilio, Telnyx, Exotel, Plivo)."""
    sid = {sid_field: phone.stream_sid}
    frames = [json.dumps({"event": "media", **sid, "media": {"payload": "!!"}}),
              json.dumps(mark or {"event": "mark", **sid, "mark": {}})]
    if other_stream:
        frames.append(json.dumps({"event": "media", sid_field: "other", "media": {"payload": "AAAA"}}))
    return frames


def profile(name: str) -> Profile:
    return importlib.import_module(f"tests.networks.{name}").PROFILE()
