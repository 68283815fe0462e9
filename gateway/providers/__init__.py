"""Model providers behind one interface (`base.Provider`); `make_provider` picks one by persona."""

from __future__ import annotations

from ..config import Config, Persona
from ..logs import CallLog
from .base import Provider


def make_provider(persona: Persona, config: Config, log: CallLog) -> Provider:
    if persona.provider == "glm":
        from .glm import GlmRealtime
        return GlmRealtime(persona, config.providers.glm, log)
    if persona.provider == "echo":
        from .echo import EchoProvider
        return EchoProvider(persona, log)
    raise ValueError(f"provider {persona.provider!r} is not available in this version")
