"""The realtime models the call-level tests run against, described the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Model:
    """What a test needs to know about one model: its fake, its test bots, its key."""
    name: str
    fake: Any
    greeter: str  # a persona that greets first
    quiet: str  # a persona that waits for the caller
    key_env: str
    secret: str  # the part of the key that must never be logged
    wrong_key: str
    fatal_code: str  # an error the service sends when the session cannot go on
    key: str = ""  # the whole key the gateway is given
    # The client cancels a reply at barge-in (and the service keeps talking for a moment); False:
    # the service stops the reply by itself when the caller talks (Gemini's `interrupted`).
    client_cancel: bool = True
    refusal: str = "HTTP 401"  # how a refused key shows in the connect error
    key_header: str = "Bearer ***"  # the key's header in the fake server's debug dump of the upgrade, scrubbed

    @staticmethod
    def instructions(session) -> str:
        """The system instructions a fake session was configured with (Gemini: setup.systemInstruction)."""
        cfg = session.session_config or {}
        if "systemInstruction" in cfg:
            return "".join(p.get("text", "") for p in cfg["systemInstruction"].get("parts") or [])
        return cfg["instructions"]

    @property
    def agent(self) -> str:
        """A persona with phone actions: end_call, transfer_call, an HTTP tool, DTMF shortcuts."""
        return f"{self.name}-agent"

    async def gateway(self, make_gateway, **kw):
        return await make_gateway(**{self.name: self.fake}, **kw)


# For a test of the call core's own behaviour (timers, pooling, pacing) whose wire part every model's
# other tests already cover: it runs for the first two models only, to keep the suite fast.
CORE_ONLY = dict(argnames="model", argvalues=["glm", "openai"], indirect=True)

