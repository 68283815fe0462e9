"""Model providers behind one interface (`base.Provider`), each declaring its `ProviderSpec`.

Adding a provider: its module (a Provider subclass, its settings dataclass, a SPEC) and one entry
in SPECS. Config reads the specs (defaults, formats, voices, env variables, readiness); nothing
else names a provider.
"""

from __future__ import annotations

from typing import Any, Sequence

import aiohttp

from ..logs import CallLogger
from ..persona import Persona
from . import echo, gemini, glm, openai, qwen
from .base import ContextTurn, Provider, ProviderSpec

SPECS: dict[str, ProviderSpec] = {spec.name: spec for spec in (glm.SPEC, openai.SPEC, qwen.SPEC, gemini.SPEC, echo.SPEC)}


def make_provider(persona: Persona, settings: Any, log: CallLogger, context: Sequence[ContextTurn] = (),
                  http: aiohttp.ClientSession | None = None) -> Provider:
    """A new, unconnected session for `persona` with its provider's `settings`
    (`Config.provider_settings`); `context` continues an existing conversation; `http`: the app's
    client session its socket is opened through (None: the provider makes and closes its own)."""
    spec = SPECS.get(persona.provider)
    if spec is None:
        raise ValueError(f"provider {persona.provider!r} is not available in this version")
    return spec.factory(persona, settings, log, tuple(context), http=http)
