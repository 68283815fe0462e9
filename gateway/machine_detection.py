"""Answering machines on outbound calls: Twilio's asynchronous machine-detection verdict.

Outbound calls are placed with `MachineDetection=DetectMessageEnd` and `AsyncAmd=true`
(outbound.amd_params): the callee is connected to the bot at once while Twilio listens, then
Twilio posts `AnsweredBy` (human, machine_end_beep, machine_end_silence, machine_end_other,
machine_start, fax, unknown) and `MachineDetectionDuration` (ms) to /twilio/amd?bot=NAME.

- human, unknown: recorded; the call goes on with the bot as before.
- machine_*: the greeting is over (DetectMessageEnd waits for its end): the persona's
  `voicemail_message` is left with Twilio's <Say> (word for word, in the persona's language)
  and the call hangs up — a REST call update, which also ends the media stream. Without a
  message, the call is hung up. End reason `answering_machine`.
- fax: hung up.

The verdict is recorded as the call's `answered_by` (and a timeline event when the call runs
here). The request is checked like the voice webhook: X-Twilio-Signature over the public URL
and the form fields when an auth token is set (403 otherwise).
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web

from .config import Config
from .ids import id_problem
from .logs import CallLogger
from .telephony.twilio.signature import request_signature, signed
from .telephony.twilio.twiml import say_and_hangup_twiml
from .telephony.twilio.rest import TwilioRestError
from .web_state import CALLS, CONFIG, REST, STORE

log = logging.getLogger("gateway")

ANSWERED_BY = ("human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax",
               "unknown")
END_REASON = "answering_machine"


def is_machine(answered_by: str) -> bool:
    return answered_by.startswith("machine_") or answered_by == "fax"


def amd_callback(public_request_url: Callable[[Config, web.Request], str]):
    """The /twilio/amd handler; `public_request_url`: the URL Twilio signed (app.public_request_url)."""

    async def handler(request: web.Request) -> web.Response:
        return await _verdict(request, public_request_url(request.app[CONFIG], request))
    return handler


async def _verdict(request: web.Request, signed_url: str) -> web.Response:
    config: Config = request.app[CONFIG]
    try:
        form = await request.post()
    except Exception:  # noqa: BLE001 - a malformed body is a 400, never a 500
        return web.Response(status=400, text="expected a form body\n")
    if config.signatures_required:
        fields = [(k, v) for k, v in form.items() if isinstance(v, str)]
        if not signed(config.twilio, request, signed_url, fields):
            log.warning("event=amd_signature_invalid remote=%s had_signature=%s", request.remote,
                        bool(request_signature(request)))
            return web.Response(status=403, text="invalid X-Twilio-Signature\n")
    call_sid = str(form.get("CallSid", ""))
    answered_by = str(form.get("AnsweredBy", ""))[:32]
    if not call_sid or not answered_by:
        return web.Response(status=400, text="expected CallSid and AnsweredBy\n")
    if bad := id_problem(call_sid, "CallSid"):
        return web.Response(status=400, text=f"{bad}\n")
    if answered_by not in ANSWERED_BY:
        answered_by = "unknown"  # a value Twilio may add later: treated like "unknown", the call goes on
    try:
        detection_ms = int(str(form.get("MachineDetectionDuration", "")))
    except ValueError:
        detection_ms = None
    persona = config.bots.get(request.query.get("bot", ""))
    call = request.app[CALLS].get(call_sid)
    clog = call.journal.log if call is not None else CallLogger(log, call=call_sid)
    if call is not None:
        call.journal.event("answered_by", answered_by=answered_by, detection_ms=detection_ms)
        call.journal.update(answered_by=answered_by)
    else:  # not (or no longer, or not yet) streaming here: the record still learns who answered
        clog.info("answered_by", answered_by=answered_by, detection_ms=detection_ms, here=False)
        request.app[STORE].enqueue("upsert_call", call_sid, {"answered_by": answered_by})
    if is_machine(answered_by):
        message = persona.voicemail_message if persona is not None and answered_by != "fax" else ""
        await _leave_machine(request.app, call, call_sid, message, persona.language if persona else "", clog)
    return web.Response(status=204)


async def _leave_machine(app: web.Application, call, call_sid: str, message: str, language: str,
                         clog: CallLogger) -> None:
    """Leave `message` (if any) with <Say> and hang up, through Twilio's REST API: the stream ends
    with it. Works for a call running on another instance too (Twilio does the work); the call's
    end reason is set only where it runs here."""
    rest = app[REST]
    if call is not None:
        call.actions.ended_by = END_REASON
    try:
        if message:
            await rest.redirect(call_sid, say_and_hangup_twiml(message, language))
        else:
            await rest.hang_up(call_sid)
    except TwilioRestError as e:
        clog.error("voicemail_failed", error=str(e)[:300])
        if call is not None:  # the stream is ours: at least stop talking to the machine
            await call.hang_up(END_REASON, why="answering machine")
        return
    if call is not None:
        call.journal.event("voicemail_left" if message else "machine_hangup", message=message or None)
        await call.phone.close()
    else:
        clog.info("voicemail_left" if message else "machine_hangup", here=False)
