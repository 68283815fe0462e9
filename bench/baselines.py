"""The baselines bench/calls.py measures the gateway against: three relays between the simulated
Twilio callers and the fake model, none with a gateway's logic, each a different answer to "what
does it cost to just move the bytes?". bench/calls.py runs each one in its own process:

    python bench/baselines.py --role relay|sample|floor --port P --proto glm|openai --model-url ws://…

- relay: the bare relay. aiohttp on both sides, stdlib json: phone media -> one model append per
  20 ms frame, the payload passed through; each model delta cut into 20 ms media frames of the
  model's own format, sent at once; speech_started -> clear + response.cancel. No DSP, no marks.
- sample: written the way Twilio's Python sample for OpenAI Realtime is written
  (twilio-samples/speech-assistant-openai-realtime-api-python), the relay most Twilio + OpenAI
  deployments start from: FastAPI on uvicorn serves the media stream, the `websockets` client
  library talks to the model, stdlib json both ways. Per phone frame: parse, note the media
  timestamp, one `input_audio_buffer.append`. Per model delta: base64-decoded and re-encoded as
  the sample does, forwarded as ONE Twilio media message followed by a mark; marks echoed by
  Twilio pop a queue; speech_started -> conversation.item.truncate at the played position +
  `clear`, as the sample does. What differs from the sample, and why:
    * uvicorn runs on asyncio's loop with h11 (the sample's requirements.txt has neither uvloop
      nor httptools; our venv has uvloop for the gateway, so "auto" would pick it);
    * the model socket is opened without permessage-deflate (`compression=None`). The sample
      keeps the library's default offer, and whether it is used is the server's choice: our fake
      model (aiohttp) would accept it, the real service may not. Deflating every 1.5 s delta would
      make the baseline dearer by a choice of the fake, so it is left out;
    * session.update is sent when Twilio's `start` arrives, not at connect: the fake model knows
      a call by its instructions (`bench-call-N`), and N comes in `start`'s customParameters;
    * after the sample's own handling of speech_started it sends `response.cancel`: the real
      model's server VAD cancels the reply by itself, the fake model only on request;
    * the hang-up (`stop` or the phone socket closing) closes the model socket (the sample
      leaves it to the model to close, which a fake that streams for ever never does).
  GLM (fake protocol `glm`) is spoken the same way: the same events with the beta names
  (`response.audio.delta`). Like the relay it does not transcode: the model's audio goes to the
  caller as it came (24 kHz PCM16 for GLM) and the callers play it at that byte rate.
- floor: the relay's logic on uvloop with orjson, and the uplink batched: five 20 ms phone frames
  (100 ms) per append, decoded, joined and re-encoded once. Model deltas are cut into 20 ms
  frames as in the relay, sent as orjson's bytes in text frames (no str round trip). The floor of
  this design: the least a Python relay of this shape can spend.

`--role relay|sample|floor` of bench/calls.py runs the same. Each imports only what it uses, so a
baseline's RSS is its own libraries'. (No `from __future__ import annotations` here: FastAPI reads
the handler's `WebSocket` annotation at run time, from names imported inside run_sample.)
"""

import argparse
import asyncio
import base64
import importlib.util
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

OUT_FRAME_BYTES = {"glm": 960, "openai": 160}  # what a baseline sends per 20 ms (the model's format)
UPLINK_BATCH = 5  # the floor's phone frames per append (100 ms)
# What each baseline needs beyond the gateway's own dependencies (pip install -e '.[bench]').
NEEDS = {"relay": ("aiohttp",), "sample": ("fastapi", "uvicorn", "websockets"), "floor": ("aiohttp", "uvloop", "orjson")}


def missing(role: str) -> list[str]:
    """The modules a baseline needs that are not importable here."""
    return [m for m in NEEDS[role] if importlib.util.find_spec(m) is None]


def run(role: str, port: int, model_url: str, proto: str) -> None:
    {"relay": run_relay, "sample": run_sample, "floor": run_floor}[role](port, model_url, proto)


# ---------------------------------------------------------------------- relay and floor (aiohttp)

def _relay_app(proto: str, model_url: str, loads, send, batch: int) -> "web.Application":
    """Phone WS <-> model WS and nothing else, with aiohttp on both sides. `loads` parses a
    message, `send(ws, obj)` writes one as a JSON text frame; `batch` phone frames go in one append
    (1: the payload passed through as it came)."""
    import aiohttp
    from aiohttp import web

    frame = OUT_FRAME_BYTES[proto]
    b64decode, b64encode = base64.b64decode, base64.b64encode

    async def media(request: web.Request) -> web.WebSocketResponse:
        phone = web.WebSocketResponse(max_msg_size=0)
        await phone.prepare(request)
        sid, model, pump = "", None, None
        pending: list[bytes] = []

        async def model_to_phone() -> None:
            async for msg in model:
                ev = loads(msg.data)
                t = ev.get("type", "")
                if t.endswith("audio.delta"):
                    audio = b64decode(ev["delta"])
                    for i in range(0, len(audio), frame):
                        await send(phone, {"event": "media", "streamSid": sid,
                                           "media": {"payload": b64encode(audio[i:i + frame]).decode()}})
                elif t == "input_audio_buffer.speech_started":
                    await send(phone, {"event": "clear", "streamSid": sid})
                    await send(model, {"type": "response.cancel"})
            await phone.close()

        try:
            async for msg in phone:
                ev = loads(msg.data)
                e = ev.get("event")
                if e == "media" and model is not None:
                    if batch == 1:
                        await send(model, {"type": "input_audio_buffer.append", "audio": ev["media"]["payload"]})
                        continue
                    pending.append(b64decode(ev["media"]["payload"]))
                    if len(pending) == batch:
                        await send(model, {"type": "input_audio_buffer.append",
                                           "audio": b64encode(b"".join(pending)).decode()})
                        pending.clear()
                elif e == "start":
                    sid = ev["streamSid"]
                    call = ev["start"]["customParameters"]["call"]
                    model = await request.app["http"].ws_connect(model_url, max_msg_size=0)
                    await send(model, {"type": "session.update", "session": {"instructions": f"bench-call-{call}"}})
                    pump = asyncio.create_task(model_to_phone())
                elif e == "stop":
                    break
        finally:
            if pump is not None:
                pump.cancel()
            if model is not None:
                await model.close()
        return phone

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(app: web.Application):
        app["http"] = aiohttp.ClientSession()
        yield
        await app["http"].close()

    app = web.Application()
    app.cleanup_ctx.append(start)
    app.router.add_get("/twilio/media", media)
    app.router.add_get("/healthz", healthz)
    return app


def run_relay(port: int, model_url: str, proto: str) -> None:
    """The bare relay: stdlib json, one append per phone frame, asyncio's loop."""
    from aiohttp import web

    app = _relay_app(proto, model_url, json.loads, lambda ws, obj: ws.send_str(json.dumps(obj)), 1)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def run_floor(port: int, model_url: str, proto: str) -> None:
    """The relay on uvloop and orjson (its bytes sent as text frames, no str round trip), the
    uplink in 100 ms appends: the floor of this design."""
    import orjson
    import uvloop
    from aiohttp import WSMsgType, web

    dumps, text = orjson.dumps, WSMsgType.TEXT
    app = _relay_app(proto, model_url, orjson.loads, lambda ws, obj: ws.send_frame(dumps(obj), text), UPLINK_BATCH)
    web.run_app(app, host="127.0.0.1", port=port, print=None, loop=uvloop.new_event_loop())


# ---------------------------------------------------------------------- Twilio's sample, our words

def run_sample(port: int, model_url: str, proto: str) -> None:
    """FastAPI + uvicorn + websockets, the per-message work of Twilio's OpenAI Realtime sample."""
    import uvicorn
    import websockets
    from fastapi import FastAPI, WebSocket
    from fastapi.responses import PlainTextResponse
    from fastapi.websockets import WebSocketDisconnect

    delta_types = ("response.output_audio.delta", "response.audio.delta")  # OpenAI GA; beta and GLM
    logged = {"error", "response.content.done", "rate_limits.updated", "response.done",
              "input_audio_buffer.committed", "input_audio_buffer.speech_stopped",
              "input_audio_buffer.speech_started", "session.created", "session.updated"}
    gone = (websockets.ConnectionClosed, WebSocketDisconnect, RuntimeError, OSError)
    app = FastAPI()

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.websocket("/twilio/media")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        async with websockets.connect(model_url, compression=None) as model:
            stream_sid = None
            latest_media_timestamp = 0
            last_assistant_item = None
            mark_queue: list[str] = []
            response_start_timestamp = None

            async def receive_from_twilio() -> None:
                nonlocal stream_sid, latest_media_timestamp, last_assistant_item, response_start_timestamp
                try:
                    async for message in websocket.iter_text():
                        data = json.loads(message)
                        if data["event"] == "media" and model.state.name == "OPEN":
                            latest_media_timestamp = int(data["media"]["timestamp"])
                            await model.send(json.dumps({"type": "input_audio_buffer.append",
                                                         "audio": data["media"]["payload"]}))
                        elif data["event"] == "start":
                            stream_sid = data["start"]["streamSid"]
                            print(f"Incoming stream has started {stream_sid}")
                            response_start_timestamp, latest_media_timestamp, last_assistant_item = None, 0, None
                            await model.send(json.dumps(session_update(data["start"]["customParameters"]["call"])))
                        elif data["event"] == "mark":
                            if mark_queue:
                                mark_queue.pop(0)
                        elif data["event"] == "stop":
                            break
                except gone as e:
                    print(f"Twilio side closed: {e!r}")
                finally:
                    await model.close()  # the hang-up ends the model session

            async def send_to_twilio() -> None:
                nonlocal last_assistant_item, response_start_timestamp
                try:
                    async for message in model:
                        response = json.loads(message)
                        if response["type"] in logged:
                            print(f"Received event: {response['type']}", response)
                        if response.get("type") in delta_types and "delta" in response:
                            payload = base64.b64encode(base64.b64decode(response["delta"])).decode("utf-8")
                            await websocket.send_json({"event": "media", "streamSid": stream_sid,
                                                       "media": {"payload": payload}})
                            if response.get("item_id") and response["item_id"] != last_assistant_item:
                                response_start_timestamp = latest_media_timestamp
                                last_assistant_item = response["item_id"]
                            await send_mark()
                        if response.get("type") == "input_audio_buffer.speech_started":
                            if last_assistant_item:
                                print(f"Interrupting response with id: {last_assistant_item}")
                                await handle_speech_started()
                            await model.send(json.dumps({"type": "response.cancel"}))  # the real VAD's own cancel
                except gone as e:
                    print(f"Error in send_to_twilio: {e!r}")

            async def handle_speech_started() -> None:
                nonlocal last_assistant_item, response_start_timestamp
                if mark_queue and response_start_timestamp is not None:
                    await model.send(json.dumps({
                        "type": "conversation.item.truncate", "item_id": last_assistant_item, "content_index": 0,
                        "audio_end_ms": latest_media_timestamp - response_start_timestamp}))
                    await websocket.send_json({"event": "clear", "streamSid": stream_sid})
                    mark_queue.clear()
                    last_assistant_item = response_start_timestamp = None

            async def send_mark() -> None:
                if stream_sid:
                    await websocket.send_json({"event": "mark", "streamSid": stream_sid,
                                               "mark": {"name": "responsePart"}})
                    mark_queue.append("responsePart")

            await asyncio.gather(receive_from_twilio(), send_to_twilio())

    def session_update(call: str) -> dict:
        """The sample's session: pcmu both ways, server VAD; the fake model reads the instructions."""
        return {"type": "session.update", "session": {
            "type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                      "output": {"format": {"type": "audio/pcmu"}}},
            "instructions": f"bench-call-{call}"}}

    # The sample's install: uvicorn without uvloop or httptools (see the module docstring).
    uvicorn.run(app, host="127.0.0.1", port=port, loop="asyncio", http="h11")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--role", choices=sorted(NEEDS), required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", choices=sorted(OUT_FRAME_BYTES), required=True)
    ap.add_argument("--model-url", required=True)
    args = ap.parse_args()
    lacking = missing(args.role)
    if lacking:
        ap.error(f"--role {args.role} needs {', '.join(lacking)}: pip install -e '.[bench]'")
    run(args.role, args.port, args.model_url, args.proto)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
