"""Putting a call together once its stream has started: the persona as this call needs it
(outbound calls speak first, with their context), the first model session and how to make the
next, the recording and the call-log writer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import aiohttp

from ..calllog import RecordWriter, CallStore
from ..capacity import fingerprint
from ..config import Config, Persona
from ..logs import CallLogger
from ..outbound import outbound_persona
from ..providers import make_provider
from ..recording import new_recording
from ..telephony import PhoneControl, PhoneStream, Started
from .coordinator import Call
from .hold import load_hold_sound
from .journal import CallObserver


def assemble_call(*, config: Config, persona: Persona, phone: PhoneStream, started: Started, log: CallLogger,
                  store: CallStore, instance: str, control: PhoneControl | None, http: aiohttp.ClientSession | None = None,
                  observers: Sequence[CallObserver] = (), api_key: str = "") -> Call:
    """A ready-to-run Call. Raises ValueError for a persona whose provider this build lacks.
    `api_key`: the pool key whose slot the call holds; every session of the call (renewals and
    reconnects too) uses it. `http`: the app's client session; the model sessions' sockets and the
    HTTP tools go through it."""
    params = started.custom_parameters
    speak_first = params.get("direction") == "outbound"
    if speak_first:
        try:
            context = json.loads(params.get("context") or "{}")
        except ValueError:
            context = {}
        persona = outbound_persona(persona, params.get("to", ""), context if isinstance(context, dict) else {})
    settings = config.provider_settings(persona.provider)
    if api_key:
        settings = dataclasses.replace(settings, api_key=api_key)
    session = make_provider(persona, settings, log, http=http)
    call_id = started.call_sid or started.stream_sid
    recording = None
    if persona.record if persona.record is not None else config.recording.enabled:
        try:
            recording = new_recording(config)  # a random key: never named after the caller's call id
        except OSError as e:
            log.error("recording_failed", error=f"{type(e).__name__}: {e}"[:200])
    try:
        hold_sound = load_hold_sound(persona.hold, Path(persona.path).parent if persona.path else config.base_dir)
    except (OSError, ValueError, EOFError) as e:  # checked at load; the file may have gone since
        log.error("hold_sound_unavailable", error=f"{type(e).__name__}: {e}"[:200])
        hold_sound = None
    call = Call(config=config, persona=persona, phone=phone, started=started, session=session, log=log,
                new_session=lambda context: make_provider(persona, settings, log, context, http=http),
                record=RecordWriter(store, call_id), instance=instance, recording=recording, control=control, http=http,
                speak_first=speak_first, hold_sound=hold_sound, observers=observers)
    if api_key:
        call.journal.update(model_key=fingerprint(api_key))
    return call
