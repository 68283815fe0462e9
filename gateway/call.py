"""One phone call: the object that owns both sockets, the resamplers, the playout and the tasks.

Data path, one direction each:
  phone Audio --(mu-law 8 kHz -> PCM -> model rate)--> provider.send_audio
  provider AudioDelta --(model rate -> 8 kHz -> mu-law -> 20 ms frames)--> Playout --> phone
Control: provider SpeechStarted while the bot is audible -> barge-in (clear, cancel, cut the
transcript to what the marks say was heard); phone MarkPlayed -> Playout (what was heard).

Tasks per call: phone reader, model reader, playout, limits (call_control.py), plus a renewer
when the model's sessions have a maximum age (renewal.py); when any of them ends, the call ends: the others are cancelled, the
model session is closed within a bounded time, the phone stream is closed (so Twilio runs the
TwiML after </Connect>), and one `call_ended` line says why.

Model sessions can be replaced mid-call (`_renew`, renewal.py): before the service's maximum session age, at
a quiet moment, a fresh session is opened with the conversation so far (what the caller said and
what they actually heard) and swapped in; the caller hears no gap. If the service ends a session
first (a renewable `ProviderError`), the same happens at once while caller audio is buffered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Sequence

from .audio import PHONE_RATE, Framer, Resampler, pcm16_to_ulaw, pcm_ms, ulaw_to_pcm16
from .call_control import CallControl
from .calllog import CallRecorder, NullRecorder
from .config import Config, Persona
from .logs import CallLog
from .outbound import SPEAK_FIRST
from .playback import Playout
from .providers.base import (AudioDelta, ContextTurn, InputTranscript, OutputTranscript, Provider,
                             ProviderConnectError, ProviderError, ResponseDone, ResponseStarted,
                             SessionReady, SpeechStarted, SpeechStopped, ToolCall)
from .renewal import SessionRenewal
from .telephony import Audio, Dtmf, MarkPlayed, Started, Stopped
from .telephony.twilio_rest import TwilioRest
from .tools import ToolRunner
from .turns import BotTurn, CallSummary

PREREADY_BUFFER_MS = 2000  # caller audio kept while the model session opens


class Call(CallControl, SessionRenewal):
    def __init__(self, *, config: Config, persona: Persona, phone, started: Started,
                 provider: Provider, log: CallLog,
                 renew: Callable[[Sequence[ContextTurn]], Provider] | None = None,
                 recorder: CallRecorder | None = None, instance: str = "", recording=None,
                 rest: TwilioRest | None = None, speak_first: bool = False):
        """`renew(context)` makes a fresh, unconnected session that continues the conversation;
        without it, a session that ends ends the call. `recorder` writes the call log;
        `recording` (a recording.CallRecording) gets both sides' audio; `rest` (Twilio's REST API)
        hangs up and transfers; `speak_first`: an outbound call, the bot opens the conversation."""
        self.config = config
        self.persona = persona
        self.phone = phone
        self.started = started
        self.provider = provider
        self.log = log
        self.call_id = started.call_sid or started.stream_sid
        self.summary = CallSummary(self.call_id, persona.name)
        caps = provider.capabilities
        self._in_resampler = Resampler(PHONE_RATE, caps.input_rate)
        self._out_resampler = Resampler(caps.output_rate, PHONE_RATE)
        self._framer = Framer()
        self.recording = recording
        self.playout = Playout(phone, config.audio.playout_lead_ms, on_first_audio=self._on_first_audio,
                               on_frame=recording.bot if recording is not None else None)
        self._ready = False
        self._preready: list[bytes] = []
        self._turns: dict[str, BotTurn] = {}
        self._active_response: str | None = None
        self._cancelled: set[str] = set()
        self._speech_stopped_at: float | None = None
        self._forced_end: str | None = None
        self._t0 = time.monotonic()
        self._make_session = renew
        self._renew_lock = asyncio.Lock()
        self._session_started = self._t0
        self._caller_speaking = False
        self._quick_deaths = 0
        self.rec = recorder or NullRecorder(self.call_id)
        self.instance = instance
        self._started_wall = time.time()
        self.rest = rest
        self._done: dict[str, asyncio.Event] = {}  # response id -> set when the response is done
        self.tools = ToolRunner(self)
        self._model_errors = 0
        self._wrapping = False
        self.speak_first = speak_first

    async def end(self, reason: str) -> None:
        """End the call from outside (server shutdown, an operator): closes the phone stream, so
        the call's tasks finish and `run` returns with this reason."""
        self._forced_end = reason
        await self.phone.close(1001 if reason == "shutdown" else 1000)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> CallSummary:
        """Runs the call to its end; never raises (a failure is an end reason and a log line)."""
        params = self.started.custom_parameters
        self.log.info("call_started", stream=self.started.stream_sid, caller=params.get("from"),
                      dialed=params.get("to"), provider=self.persona.provider, model=self.persona.model)
        self.rec.update(stream_id=self.started.stream_sid, network="twilio",
                        direction="outbound" if self.speak_first else "inbound", from_number=params.get("from"),
                        to_number=params.get("to"), bot=self.persona.name, provider=self.persona.provider,
                        model=self.persona.model, instance=self.instance, started_at=self._started_wall)
        limit = self.persona.max_call_seconds or self.config.limits.max_call_seconds
        tasks = [asyncio.create_task(self._phone_loop(), name=f"phone:{self.call_id}"),
                 asyncio.create_task(self._model_loop(), name=f"model:{self.call_id}"),
                 asyncio.create_task(self._playout_loop(), name=f"playout:{self.call_id}")]
        tasks.append(asyncio.create_task(self._limits_loop(limit), name=f"limits:{self.call_id}"))
        if self._make_session is not None and self.provider.capabilities.max_session_seconds:
            tasks.append(asyncio.create_task(self._renew_loop(), name=f"renew:{self.call_id}"))
        reason = "max_duration"
        try:
            done, _ = await asyncio.wait(tasks, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.cancelled():
                    continue
                exc = t.exception()
                if exc is not None:
                    self.log.error("call_task_crashed", task=t.get_name().split(":")[0],
                                   error=f"{type(exc).__name__}: {exc}"[:300])
                    self._error("internal_error", f"{type(exc).__name__} in the {t.get_name().split(':')[0]} task")
                    reason = "internal_error"
                else:
                    reason = t.result()
                break
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        finally:
            for t in tasks:
                t.cancel()
            # Bounded: a cancellation swallowed somewhere below (asyncio.wait_for can do that when
            # its inner task finishes at the same moment) must not keep the call open forever.
            _, stuck = await asyncio.wait(tasks, timeout=5)
            for t in stuck:
                self.log.error("call_task_stuck", task=t.get_name().split(":")[0])
                t.cancel()
            await self._close(self._forced_end or reason)
        return self.summary

    async def _close(self, reason: str) -> None:
        self.summary.end_reason = reason
        await self.tools.close()
        await self._close_session(self.provider)
        if reason != "caller_hangup":
            await self.phone.close()
        for turn in self._turns.values():
            if not turn.done:
                self._finish_turn(turn)
        duration = round(time.monotonic() - self._t0, 3)
        if self.recording is not None:
            try:
                self.recording.close()
                self.rec.update(recording=self.recording.path.name)
            except OSError as e:
                self.log.error("recording_failed", error=f"{type(e).__name__}: {e}"[:200])
        self.rec.event("call_ended", duration, reason=reason, error=self.summary.error or None)
        self.rec.update(ended_at=self._started_wall + duration, duration_s=duration, end_reason=reason,
                        error=self.summary.error or None, barge_ins=self.summary.barge_ins,
                        turns=sum(1 for e in self.summary.transcript if e["role"] == "bot"),
                        input_tokens=self.summary.input_tokens, output_tokens=self.summary.output_tokens)
        self.log.info("call_ended", reason=reason, duration_s=round(duration, 2),
                      barge_ins=self.summary.barge_ins, frames_in=getattr(self.phone, "media_frames_in", None),
                      frames_out=self.playout.frames_sent, marks_played=self.playout.marks_played,
                      frames_dropped=self.playout.frames_dropped or None,
                      protocol_errors=getattr(self.phone, "protocol_errors", None),
                      model_sessions=self.summary.sessions if self.summary.sessions > 1 else None)

    def _offset(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    offset = _offset  # seconds since the call started (what timeline events carry)

    # ------------------------------------------------------------------ phone -> model
    async def _phone_loop(self) -> str:
        async for ev in self.phone.events():
            if isinstance(ev, Audio):
                await self._caller_audio(ev.payload)
            elif isinstance(ev, MarkPlayed):
                self.playout.on_mark(ev.name)
            elif isinstance(ev, Dtmf):
                self.log.info("dtmf", digit=ev.digit)
                t = self._offset()
                self.summary.transcript.append({"role": "dtmf", "text": ev.digit, "t": t})
                self.rec.event("dtmf", t, digit=ev.digit)
                if self._ready:
                    self.tools.dtmf(ev.digit)
            elif isinstance(ev, Stopped):
                if ev.reason == "protocol_errors":
                    return "protocol_error"
                self.log.info("caller_hangup", how=ev.reason)
                return "caller_hangup"
        return "caller_hangup"

    async def _caller_audio(self, ulaw: bytes) -> None:
        if self.recording is not None:
            self.recording.caller(ulaw)
        caps = self.provider.capabilities
        audio = ulaw if caps.input_format == "mulaw" else self._in_resampler.process(ulaw_to_pcm16(ulaw))
        if not self._ready:
            self._preready.append(audio)
            while len(self._preready) * 20 > PREREADY_BUFFER_MS:
                self._preready.pop(0)
            return
        await self.provider.send_audio(audio)

    # ------------------------------------------------------------------ model -> phone
    async def _model_loop(self) -> str:
        try:
            await self.provider.connect()
        except ProviderConnectError as e:
            self.log.error("model_connect_failed", error=str(e)[:300])
            self._error("model_connect_failed", str(e))
            return "model_error"
        self.log.info("model_session_ready", provider=self.persona.provider)
        await self._session_open()
        if self.speak_first:
            await self.provider.send_text(SPEAK_FIRST)
        while True:
            provider = self.provider
            reason = await self._pump(provider)
            if self.provider is provider:
                return reason
            # renewed: read the new session (the old one's last events have been handled)

    async def _session_open(self) -> None:
        """A session is up: caller audio flows to it, starting with what was buffered meanwhile."""
        self._session_started = time.monotonic()
        while self._preready:  # audio arriving while this flushes joins the queue, keeping order
            buffered, self._preready = self._preready, []
            for audio in buffered:
                await self.provider.send_audio(audio)
        self._ready = True

    async def _pump(self, provider: Provider) -> str:
        async for ev in provider.events():
            if isinstance(ev, AudioDelta):
                self._model_audio(ev)
            elif isinstance(ev, SpeechStarted):
                self._caller_speaking = True
                await self._speech_started()
            elif isinstance(ev, SpeechStopped):
                self._caller_speaking = False
                self._speech_stopped_at = time.monotonic()
                self.log.debug("caller_speech_stopped")
            elif isinstance(ev, ResponseStarted):
                self._active_response = ev.response_id
                self._done.setdefault(ev.response_id, asyncio.Event())
                self._turns.setdefault(ev.response_id, BotTurn(ev.response_id, time.monotonic()))
            elif isinstance(ev, OutputTranscript):
                turn = self._turns.setdefault(ev.response_id, BotTurn(ev.response_id, time.monotonic()))
                if ev.final:
                    turn.text, turn.final = ev.text, True
                elif not turn.final:
                    turn.text += ev.text
            elif isinstance(ev, InputTranscript):
                self.log.info("caller_said", text=ev.text[:500])
                t = self._offset()
                self.summary.transcript.append({"role": "caller", "text": ev.text, "t": t})
                self.rec.event("caller", t, text=ev.text)
            elif isinstance(ev, ResponseDone):
                self._response_done(ev)
            elif isinstance(ev, ToolCall):
                self.tools.handle(ev)
            elif isinstance(ev, ProviderError):
                if not ev.fatal:
                    if ev.code != "response_cancel_not_active":  # a benign race, not worth a line
                        self.rec.event("model_error", self._offset(), code=ev.code, message=ev.message[:300])
                        self._model_errors += 1
                        if self._model_errors >= self.config.limits.max_model_errors:
                            self.log.error("model_failed", code="too_many_errors", errors=self._model_errors)
                            self._error("too_many_errors", f"{self._model_errors} model errors in a row, last: "
                                        f"{ev.code}: {ev.message}")
                            return "model_error"
                    continue
                if provider is not self.provider:
                    return "model_closed"  # a replaced session ending: not this call's problem
                if ev.renewable and await self._renew(f"model:{ev.code}", failed=provider):
                    return "renewed"
                self.log.error("model_failed", code=ev.code, message=ev.message[:300])
                self._error(ev.code, ev.message)
                return "model_error"
            elif isinstance(ev, SessionReady):
                pass
        return "model_closed"

    def _model_audio(self, ev: AudioDelta) -> None:
        turn = self._turns.setdefault(ev.response_id, BotTurn(ev.response_id, time.monotonic()))
        turn.item_id = turn.item_id or ev.item_id
        caps = self.provider.capabilities
        ms = pcm_ms(len(ev.audio), caps.output_rate) if caps.output_format == "pcm16" else len(ev.audio) / 8
        turn.generated_ms += ms
        if ev.item_id == turn.item_id:
            turn.item_ms += ms
        if ev.response_id in self._cancelled or turn.interrupted:
            return  # late delta of a response the caller talked over
        ulaw = ev.audio if caps.output_format == "mulaw" else pcm16_to_ulaw(
            self._out_resampler.process(ev.audio))
        self.playout.enqueue(self._framer.push(ulaw), ev.response_id)

    def _response_done(self, ev: ResponseDone) -> None:
        self._done.setdefault(ev.response_id, asyncio.Event()).set()
        if ev.status == "completed":
            self._model_errors = 0
        turn = self._turns.get(ev.response_id)
        if self._active_response == ev.response_id:
            self._active_response = None
        if turn is None or turn.done:
            return
        if not turn.interrupted:  # the reply's last audio: what the filters hold, the partial frame
            frames = []
            if self.provider.capabilities.output_format == "pcm16":
                frames = self._framer.push(pcm16_to_ulaw(self._out_resampler.flush()))
            tail = self._framer.flush()
            self.playout.enqueue(frames + ([tail] if tail else []), ev.response_id)
        if ev.usage:
            for key in ("input_tokens", "output_tokens"):
                if isinstance(ev.usage.get(key), int):
                    setattr(self.summary, key, getattr(self.summary, key) + ev.usage[key])
            self.log.info("model_usage", response=ev.response_id, **{k: v for k, v in ev.usage.items()
                                                                    if isinstance(v, (int, float))})
        self._finish_turn(turn, status=ev.status)

    def _finish_turn(self, turn: BotTurn, status: str = "") -> None:
        turn.done = True
        heard = turn.heard_text()
        entry = {"role": "bot", "text": turn.text, "heard": heard, "interrupted": turn.interrupted,
                 "t": round(turn.started_at - self._t0, 3)}
        if turn.heard_ms is not None:
            entry["heard_ms"] = round(turn.heard_ms)
        turn.entry = entry
        self.summary.transcript.append(entry)
        self.rec.event("bot", entry["t"], text=turn.text, response=turn.response_id, heard=heard,
                       interrupted=turn.interrupted, heard_ms=entry.get("heard_ms"), status=status or None,
                       generated_ms=round(turn.generated_ms))
        self.log.info("bot_said", response=turn.response_id, status=status or None, text=turn.text[:500],
                      interrupted=turn.interrupted, heard=heard[:500] if turn.interrupted else None,
                      generated_ms=round(turn.generated_ms))

    async def _on_first_audio(self, response_id: str, at: float) -> None:
        turn = self._turns.get(response_id)
        if turn is not None:
            turn.first_audio_at = at
        if self.playout.frames_sent <= 1:  # the call's first bot audio (usually the greeting)
            self.rec.update(first_audio_at=self._started_wall + (at - self._t0))
        if self._speech_stopped_at is not None:
            latency = (at - self._speech_stopped_at) * 1000
            self._speech_stopped_at = None
            self.summary.turn_latencies_ms.append(round(latency, 1))
            self.log.info("turn_latency", response=response_id, ms=round(latency))
            self.rec.event("latency", round(at - self._t0, 3), response=response_id, ms=round(latency))

    # ------------------------------------------------------------------ barge-in
    async def _speech_started(self) -> None:
        audible = self.playout.busy()
        active = self._active_response
        if not audible and active is None:
            self.log.debug("caller_speech_started")
            return
        cut = await self.playout.clear()  # first: every ms counts while the caller talks over us
        if self.recording is not None:
            self.recording.cut_bot(time.monotonic())
        self._framer.reset()
        self._out_resampler.reset()
        if active is not None:
            self._cancelled.add(active)
            self._active_response = None
            await self.provider.cancel_response(active)
            cut.setdefault(active, self.playout.heard_ms.get(active, 0.0))
        self.summary.barge_ins += 1
        for rid, heard in cut.items():
            turn = self._turns.get(rid)
            if turn is None:
                continue
            turn.interrupted = True
            turn.heard_ms = heard
            await self._forget_unheard(turn)
            if turn.entry is not None:  # fully generated but still playing: amend its line
                turn.entry.update(interrupted=True, heard=turn.heard_text(), heard_ms=round(heard))
                self.rec.event("bot_cut", self._offset(), response=rid, heard=turn.heard_text(),
                               heard_ms=round(heard))
        self.log.info("barge_in", responses=",".join(cut) or None, cancelled=active,
                      heard_ms=",".join(str(round(v)) for v in cut.values()) or None)
        self.rec.event("barge_in", self._offset(), responses=list(cut), cancelled=active,
                       heard_ms=[round(v) for v in cut.values()])

    async def _forget_unheard(self, turn: BotTurn) -> None:
        """Where the model can, make its memory match the caller's ears: truncate the reply to the
        played time (never past what was generated: models reject that), or delete it if none
        of it was heard. GLM cannot (capabilities.truncate is False): only our transcript is cut."""
        if not self.provider.capabilities.truncate or not turn.item_id:
            return
        played = int(min(turn.heard_ms or 0.0, turn.item_ms))
        if played > 0:
            await self.provider.truncate(turn.item_id, played)
        else:
            await self.provider.delete_item(turn.item_id)
        self.log.info("model_memory_cut", item=turn.item_id, audio_end_ms=played if played > 0 else None,
                      deleted=played <= 0)

    def _error(self, code: str, message: str) -> None:
        self.summary.error = f"{code}: {message}"[:500]
        self.rec.event("error", self._offset(), code=code, message=message[:500])

    async def _close_session(self, provider: Provider) -> None:
        try:
            await asyncio.wait_for(provider.close(), self.config.limits.model_close_timeout_seconds)
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - closing must not raise
            self.log.warning("model_close_slow", error=type(e).__name__)

    async def _playout_loop(self) -> str:
        await self.playout.run()
        return "caller_hangup"  # the phone stopped accepting audio: it is gone
