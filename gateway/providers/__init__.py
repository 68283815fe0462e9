"""Model providers behind one interface (`base.Provider`); `make_provider` picks one by persona."""

from __future__ import annotations

from typing import Sequence

from ..config import Config, Persona
from ..logs import CallLog
from .base import ContextTurn, Provider


def make_provider(persona: Persona, config: Config, log: CallLog,
                  context: Sequence[ContextTurn] = ()) -> Provider:
    """A new, unconnected session for `persona`; `context` continues an existing conversation."""
    if persona.provider == "glm":
        from .glm import GlmRealtime
        return GlmRealtime(persona, config.providers.glm, log, context)
    if persona.provider == "openai":
        from .openai import OpenAIRealtime
        return OpenAIRealtime(persona, config.providers.openai, log, context)
    if persona.provider == "echo":
        from .echo import EchoProvider
        return EchoProvider(persona, log, context=context)
    raise ValueError(f"provider {persona.provider!r} is not available in this version")
