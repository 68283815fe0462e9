"""One phone call: the coordinator that owns the call's tasks and the order of things.

Data path, one direction each:
  phone Audio --Uplink (voiced? batch or send now) --AudioBridge.to_model--> ModelLink --> model session
  model AudioDelta --AudioBridge.to_phone--> Playout (paced chunks of 20 ms frames + marks) --> phone
Control: the model hears the caller start speaking while the bot is audible -> barge-in, in this
order: clear the phone (every ms counts), cancel the reply, cut the transcript and the model's
memory to what the marks say was heard. Under the confirm policy the phone is cleared at once too
(Playout.hold keeps what was not heard) and the BargeInJudge decides: cut, or resume. Echoed marks
tell the Playout what was heard.

The parts (each owns its state; they reach each other only through the references given here):
Conversation (turns, transcript, context), Journal (log line + record + summary, written once),
AudioBridge (formats), Uplink (speech-aware batching, the energy measure), ModelLink (sessions,
renewal, reconnect), Playout (pacing, marks, hold), BargeInJudge (the confirm policy), PhoneActions
(hang up, transfer, say, wait until heard), ToolRunner, CallLimits.

Tasks per call: phone reader, model reader, playout, limits, and a renewer when the model's
sessions have a maximum age. When any of them ends, the call ends: the others are cancelled, the
model session is closed within a bounded time, the phone stream is closed (so Twilio runs the
TwiML after </Connect>), and one `call_ended` line says why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import aiohttp

from ..calllog import RecordWriter, NullRecordWriter
from ..config import Config, Persona
from ..logs import CallLogger
from ..outbound import SPEAK_FIRST
from ..playout import Playout
from ..providers.base import (AudioDelta, InputTranscript, OutputTranscript, Provider, ProviderConnectError,
                              ProviderError, ResponseDone, ResponseStarted, SpeechStarted, SpeechStopped, ToolCall)
from ..telephony import Audio, Dtmf, MarkPlayed, PhoneControl, PhoneStream, Started, Stopped
from .actions import PhoneActions
from .audio_bridge import AudioBridge, PhoneFormat
from .barge_in import BargeInJudge
from .conversation import Conversation, TranscriptEntry
from .hold import HOLD, HoldSound
from .journal import CallObserver, CallSummary, Journal
from .limits import CallLimits
from .model_link import ModelLink, SessionFactory, SessionLost, SessionReplaced
from .tools import ToolRunner
from .uplink import Uplink
from ..clock import monotonic

RESTARTING = ("(The service is restarting now. Apologise briefly, say the caller can call back in a minute, "
              "and say goodbye.)")


@dataclass(frozen=True)
class CallStatus:
    """A live call as operators see it."""
    call_id: str
    bot: str
    network: str
    caller: str | None
    dialed: str | None
    started_at: float  # UNIX time
    duration_s: float
    barge_ins: int
    turns: int
    last: TranscriptEntry | None


class Call:
    def __init__(self, *, config: Config, persona: Persona, phone: PhoneStream, started: Started, session: Provider,
                 log: CallLogger, new_session: SessionFactory | None = None, record: RecordWriter | None = None,
                 recording=None, control: PhoneControl | None = None, http: aiohttp.ClientSession | None = None,
                 speak_first: bool = False, instance: str = "", hold_sound: bytes | None = None,
                 clock: Callable[[], float] = monotonic, observers: Sequence[CallObserver] = ()):
        """`session`: the first (unconnected) model session; `new_session(context)` makes the next
        one (renewal, reconnect; None: a session that ends ends the call). `record` writes the call
        log; `recording` (a recording.AudioRecording) gets both sides' audio; `control` (made by the
        call's network) hangs up and transfers; `http`: the app's client session (HTTP tools);
        `speak_first`: an outbound call, the bot opens; `hold_sound`: what the caller hears while the
        bot waits (8 kHz mu-law; None: silence); `observers`: follow the journal (metrics, call
        webhooks)."""
        self.config = config
        self.persona = persona
        self.phone = phone
        self.started = started
        self.call_id = started.call_sid or started.stream_sid
        self.instance = instance
        self.speak_first = speak_first
        self.recording = recording
        self.clock = clock
        self._t0 = clock()
        self._started_wall = time.time()
        self.conversation = Conversation(clock, self._t0)
        self.summary = CallSummary(self.call_id, persona.name, transcript=self.conversation.transcript)
        self.journal = Journal(log, record or NullRecordWriter(self.call_id), self.summary, self.conversation.offset,
                               observers)
        fmt = PhoneFormat.of(started)  # what the phone speaks; the bridge converts, the Playout counts in it
        self.audio = AudioBridge(session.capabilities, fmt)
        self.playout = Playout(phone, config.audio.playout_lead_ms, chunk_ms=config.audio.chunk_ms, clock=clock,
                               bytes_per_ms=fmt.bytes_per_ms,
                               min_chunk_frames=-(-phone.min_chunk_bytes // fmt.frame_bytes) or 1,
                               on_first_audio=self._first_audio, on_first_heard=self._first_heard,
                               on_idle=lambda: self.limits.wake(),
                               on_frame=self._record_bot if recording is not None else None)
        self.hold = HoldSound(self.audio.phone_sound(hold_sound), persona.hold.after_ms, self.playout, self.journal,
                              clock, frame_bytes=fmt.frame_bytes)
        self.model = ModelLink(session, new_session=new_session, context=self.conversation.context,
                               quiet=self.quiet, limits=config.limits, journal=self.journal, clock=clock)
        caps = session.capabilities
        self.uplink = Uplink(self.audio, self.model, threshold=persona.barge_in.threshold,
                             block_ms=caps.input_block_ms, vad_silence_ms=caps.vad_silence_ms, clock=clock)
        self.actions = PhoneActions(phone=phone, playout=self.playout, conversation=self.conversation,
                                    model=self.model, journal=self.journal, persona=persona, started=started,
                                    control=control, hold=self.hold, clock=clock)
        self.tools = ToolRunner(persona=persona, actions=self.actions, model=self.model,
                                conversation=self.conversation, journal=self.journal, stop_bot=self.stop_bot,
                                hold=self.hold, http=http, name=self.call_id)
        self.limits = CallLimits(limits=config.limits,
                                 max_call_seconds=persona.max_call_seconds or config.limits.max_call_seconds,
                                 actions=self.actions, model=self.model, journal=self.journal, quiet=self.quiet,
                                 caller_speaking=lambda: self.conversation.caller_speaking,
                                 started_at=self._t0, clock=clock)
        self.judge = BargeInJudge(persona.barge_in, playout=self.playout, uplink=self.uplink, journal=self.journal,
                                  clock=clock, cut=self._barge_in,
                                  on_hold=self.recording.cut_bot if recording is not None else None)
        self._model_errors = 0
        self._speech_from: float | None = None  # when the caller's current speech began (offset, s)

    # ------------------------------------------------------------------ public surface
    def status(self) -> CallStatus:
        params = self.started.custom_parameters
        transcript = self.conversation.transcript
        return CallStatus(self.call_id, self.persona.name, self.phone.network,
                          params.get("from"), params.get("to"), self._started_wall,
                          round(self.clock() - self._t0, 1), self.summary.barge_ins,
                          self.conversation.bot_turns(), transcript[-1] if transcript else None)

    def quiet(self) -> bool:
        """Nobody is talking: no caller speech, no reply being generated, no bot audio pending."""
        return not (self.conversation.caller_speaking or self.conversation.active_response or self.playout.busy())

    async def hang_up(self, reason: str, why: str = "") -> None:
        await self.actions.hang_up(reason, why)

    async def wrap_up(self, reason: str, timeout: float = 12.0) -> None:
        """The gateway is going away: the bot apologises and says goodbye, then the call ends."""
        await self.actions.goodbye(reason, RESTARTING, why="gateway stopping", timeout=timeout)

    async def end(self, reason: str) -> None:
        """End the call now from outside (server shutdown): closes the phone stream, so the call's
        tasks finish and `run` returns with this reason."""
        self.actions.ended_by = reason
        await self.phone.close(1001 if reason == "shutdown" else 1000)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> CallSummary:
        """Runs the call to its end; never raises (a failure is an end reason and a log line)."""
        params = self.started.custom_parameters
        self.journal.log.info("call_started", stream=self.started.stream_sid, caller=params.get("from"),
                              dialed=params.get("to"), provider=self.persona.provider, model=self.persona.model)
        self.journal.update(stream_id=self.started.stream_sid, network=self.phone.network,
                            direction="outbound" if self.speak_first else "inbound", from_number=params.get("from"),
                            to_number=params.get("to"), bot=self.persona.name, provider=self.persona.provider,
                            model=self.persona.model, instance=self.instance, started_at=self._started_wall)
        tasks = [asyncio.create_task(self._phone_loop(), name=f"phone:{self.call_id}"),
                 asyncio.create_task(self._model_loop(), name=f"model:{self.call_id}"),
                 asyncio.create_task(self._playout_loop(), name=f"playout:{self.call_id}"),
                 asyncio.create_task(self.limits.run(), name=f"limits:{self.call_id}")]
        if self.model.capabilities.max_session_seconds:
            tasks.append(asyncio.create_task(self.model.run_renewals(), name=f"renew:{self.call_id}"))
        reason = "max_duration"
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.limits.max_call_seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.cancelled():
                    continue
                exc = t.exception()
                task = t.get_name().split(":")[0]
                if exc is not None:
                    self.journal.log.error("call_task_crashed", task=task, error=f"{type(exc).__name__}: {exc}"[:300])
                    self.journal.error("internal_error", f"{type(exc).__name__} in the {task} task")
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
                self.journal.log.error("call_task_stuck", task=t.get_name().split(":")[0])
                t.cancel()
            await self._close(self.actions.ended_by or reason)
        return self.summary

    async def _close(self, reason: str) -> None:
        self.summary.end_reason = reason
        self.hold.stop()
        self.judge.decided()
        self.summary.sessions = self.model.sessions
        await self.tools.close()
        await self.model.close_session()
        if reason != "caller_hangup":
            await self.phone.close()
        for turn in self.conversation.unfinished():
            self.journal.line(self.conversation.finish(turn), generated_ms=turn.generated_ms)
        duration = round(self.clock() - self._t0, 3)
        if self.recording is not None:
            try:
                self.recording.close()
                self.journal.update(recording=self.recording.path.name)
            except OSError as e:
                self.journal.log.error("recording_failed", error=f"{type(e).__name__}: {e}"[:200])
        s = self.summary
        self.journal.event("call_ended", reason=reason, error=s.error or None, duration_s=round(duration, 2),
                           barge_ins=s.barge_ins, frames_in=self.phone.media_frames_in,
                           frames_out=self.playout.frames_sent, marks_played=self.playout.marks_played,
                           frames_dropped=self.playout.frames_dropped or None,
                           protocol_errors=self.phone.protocol_errors,
                           model_sessions=s.sessions if s.sessions > 1 else None)
        self.journal.update(ended_at=self._started_wall + duration, duration_s=duration, end_reason=reason,
                            error=s.error or None, barge_ins=s.barge_ins, turns=self.conversation.bot_turns(),
                            input_tokens=s.input_tokens, output_tokens=s.output_tokens)

    # ------------------------------------------------------------------ phone -> model
    async def _phone_loop(self) -> str:
        async for ev in self.phone.events():
            if isinstance(ev, Audio):
                if self.recording is not None:  # 8 kHz mu-law (on a mu-law phone: its own bytes)
                    self.recording.caller(self.audio.to_ulaw8k(ev.payload))
                voiced = await self.uplink.frame(ev.payload)
                if self.judge.pending:
                    await self.judge.frame(voiced)
            elif isinstance(ev, MarkPlayed):
                self.playout.on_mark(ev.name)
            elif isinstance(ev, Dtmf):
                self.journal.line(self.conversation.keypad(ev.digit))
                if self.model.ready:
                    self.tools.dtmf(ev.digit)
            elif isinstance(ev, Stopped):
                if ev.reason == "protocol_errors":
                    return "protocol_error"
                self.journal.log.info("caller_hangup", how=ev.reason)
                return "caller_hangup"
        return "caller_hangup"

    # ------------------------------------------------------------------ model -> phone
    async def _model_loop(self) -> str:
        try:
            await self.model.open()
        except ProviderConnectError as e:
            self.journal.log.error("model_connect_failed", error=str(e)[:300])
            self.journal.error("model_connect_failed", str(e))
            return "model_error"
        self.journal.log.info("model_session_ready", provider=self.persona.provider)
        self.limits.wake()
        if self.speak_first:
            await self.model.send_text(SPEAK_FIRST)
        async for ev in self.model.events():
            if isinstance(ev, AudioDelta):
                self._bot_audio(ev)
            elif isinstance(ev, SpeechStarted):
                self.conversation.speech_started()
                self.limits.wake(caller_spoke=True)
                self._speech_from = self.conversation.offset()
                await self._caller_started_speaking(ev.interrupted)
            elif isinstance(ev, SpeechStopped):
                self.conversation.speech_stopped(self.uplink.last_voiced_at)
                self.limits.wake()
                self.journal.log.debug("caller_speech_stopped")
                if self._speech_from is not None:  # a caller speech segment, for the call's timeline:
                    # to their last voiced frame (the model's VAD says so only after its silence wait)
                    voiced = self.uplink.last_voiced_at
                    end = voiced - self._t0 if voiced is not None and voiced - self._t0 > self._speech_from \
                        else self.conversation.offset()
                    ms = round((end - self._speech_from) * 1000)
                    self.journal.record.event("speech", self._speech_from, ms=ms)
                    self._speech_from = None
                self.judge.speech_ended()
            elif isinstance(ev, ResponseStarted):
                self.conversation.response_started(ev.response_id)
                self.limits.wake()
            elif isinstance(ev, OutputTranscript):
                self.conversation.output_text(ev.response_id, ev.text, ev.final)
            elif isinstance(ev, InputTranscript):
                self.journal.line(self.conversation.caller_said(ev.text))
                await self.judge.words(ev.text)
            elif isinstance(ev, ResponseDone):
                self._response_done(ev)
                self.limits.wake()
            elif isinstance(ev, ToolCall):
                self.tools.handle(ev)
            elif isinstance(ev, (SessionLost, SessionReplaced)):
                active = self.conversation.active_response
                if active is not None:  # a reply the old session will never finish
                    self._response_done(ResponseDone(active, "incomplete"))
                if isinstance(ev, SessionLost):
                    self.hold.begin("reconnect")
                else:
                    self.hold.end("reconnect")
            elif isinstance(ev, ProviderError):
                if ev.fatal:
                    self.hold.end("reconnect")
                    self.journal.log.error("model_failed", code=ev.code, message=ev.message[:300])
                    self.journal.error(ev.code, ev.message)
                    return "model_error"
                if self._model_error(ev):
                    return "model_error"
        return "model_closed"

    def _model_error(self, ev: ProviderError) -> bool:
        """A recoverable model error; True when there have been too many in a row."""
        if ev.code == "response_cancel_not_active":  # a benign race, not worth a record
            return False
        self.journal.event("model_error", level="debug", code=ev.code, message=ev.message[:300])
        self._model_errors += 1
        if self._model_errors < self.config.limits.max_model_errors:
            return False
        self.journal.log.error("model_failed", code="too_many_errors", errors=self._model_errors)
        self.journal.error("too_many_errors", f"{self._model_errors} model errors in a row, last: {ev.code}: {ev.message}")
        return True

    def _bot_audio(self, ev: AudioDelta) -> None:
        if self.conversation.audio_generated(ev.response_id, ev.item_id, self.audio.model_ms(ev.audio)):
            self.playout.enqueue(self.audio.to_phone(ev.audio), ev.response_id)
        # else: a late delta of a reply the caller talked over

    def _response_done(self, ev: ResponseDone) -> None:
        if ev.status == "completed":
            self._model_errors = 0
        turn = self.conversation.response_done(ev.response_id)
        if turn is None:
            return
        if not turn.interrupted:  # the reply's last audio: what the filters hold, the partial frame
            self.playout.enqueue(self.audio.end_of_reply(), ev.response_id)
        if ev.usage:
            for key in ("input_tokens", "output_tokens"):
                if isinstance(ev.usage.get(key), int):
                    setattr(self.summary, key, getattr(self.summary, key) + ev.usage[key])
            self.journal.log.info("model_usage", response=ev.response_id,
                                  **{k: v for k, v in ev.usage.items() if isinstance(v, (int, float))})
        self.journal.line(self.conversation.finish(turn), status=ev.status, generated_ms=turn.generated_ms)

    async def _first_audio(self, response_id: str, at: float) -> None:
        if response_id == HOLD:
            return  # not the bot's answer: no latency, no first audio
        turn = self.conversation.find_turn(response_id)
        if turn is not None:
            self.conversation.reply_started(turn, at)
        if self.playout.chunks_sent <= 1:  # the call's first bot audio (usually the greeting)
            self.journal.update(first_audio_at=self._started_wall + (at - self._t0))

    def _first_heard(self, response_id: str, played_at: float) -> None:
        """A reply's first audio has played at the phone (its mark came back): the turn latency
        the caller lived through, from the last voiced frame of what they said to this moment."""
        turn = self.conversation.find_turn(response_id) if response_id != HOLD else None
        if turn is None or turn.voice_end_at is None:
            return  # the hold sound, a greeting, or a reply that answers no caller speech
        latency = round((played_at - turn.voice_end_at) * 1000, 1)
        self.summary.turn_latencies_ms.append(latency)
        model = turn.model_latency_ms
        if model is not None:
            self.summary.model_latencies_ms.append(model)
        self.journal.event("latency", log_as="turn_latency", at=played_at - self._t0, response=response_id,
                           ms=round(latency), model_ms=round(model) if model is not None else None)

    # ------------------------------------------------------------------ barge-in
    async def _caller_started_speaking(self, model_stopped: bool = False) -> None:
        """`model_stopped`: the model already cut its reply for the caller (its own barge-in)."""
        if self.hold.waiting and self.hold.only_hold_audible():
            self.hold.stop()  # talking over the hold sound: just stop it
            await self.playout.clear()
            return
        if not (self.playout.busy() or self.conversation.active_response is not None):
            self.journal.log.debug("caller_speech_started")
            return
        policy = self.persona.barge_in
        if model_stopped:  # the model's own decision: cut now (a pending confirmation is decided too)
            await self._barge_in(by="caller", confirmed_by="model")
        elif policy.policy == "immediate":
            await self._barge_in(by="caller")
        else:
            await self.judge.caller_started()  # silent now; the reply resumes if it was a cough

    async def stop_bot(self) -> None:
        """Silence the bot now (a keypad shortcut acts at once): the same as a barge-in."""
        if self.playout.busy() or self.conversation.active_response is not None:
            await self._barge_in(by="keypad")

    async def _barge_in(self, by: str, **why) -> None:
        """Clear first (the caller is talking over us), then cancel, then cut what was not heard."""
        self.judge.decided()  # whatever was pending is decided now (confirmed, or the keypad)
        cut = await self.playout.clear()
        cut.pop(HOLD, None)
        if self.recording is not None:
            self.recording.cut_bot(self.clock())
        self.audio.drop_bot_audio()
        active = self.conversation.cancel_active()
        if active is not None:
            await self.model.cancel_response(active)
            cut.setdefault(active, self.playout.heard_ms.get(active, 0.0))
        self.summary.barge_ins += 1
        for rid, heard in cut.items():
            turn = self.conversation.cut(rid, heard)
            if turn is None:
                continue
            await self._forget_unheard(turn.item_id, heard, turn.item_ms)
            if turn.line is not None:
                self.journal.bot_line_cut(turn.line)
        self.journal.event("barge_in", by=by, responses=list(cut), cancelled=active,
                           heard_ms=[round(v) for v in cut.values()], **why)

    async def _forget_unheard(self, item_id: str, heard_ms: float, item_ms: float) -> None:
        """Where the model can, make its memory match the caller's ears: truncate the reply to the
        played time (never past what was generated: models reject that), or delete it if none
        of it was heard. GLM cannot (capabilities.truncate is False): only our transcript is cut."""
        if not self.model.capabilities.truncate or not item_id:
            return
        played = int(min(heard_ms, item_ms))
        if played > 0:
            await self.model.truncate(item_id, played)
        else:
            await self.model.delete_item(item_id)
        self.journal.log.info("model_memory_cut", item=item_id, audio_end_ms=played if played > 0 else None,
                              deleted=played <= 0)

    def _record_bot(self, audio: bytes, starts_at: float) -> None:
        self.recording.bot(self.audio.to_ulaw8k(audio, "bot"), starts_at)

    async def _playout_loop(self) -> str:
        await self.playout.run()
        return "caller_hangup"  # the phone stopped accepting audio: it is gone
