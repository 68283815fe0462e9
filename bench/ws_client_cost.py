"""What the model socket's client library costs per call: `websockets` (what providers/wsbase.py
used until issue 22) against aiohttp's client (what it and the phone side use now, with the same
options as providers/wsclient.py), on the traffic of one GLM call.

    .venv/py3.11/bin/python bench/ws_client_cost.py [--calls 50] [--seconds 10]

A server in a child process plays the model: it reads appends and sends a 1.5 s audio delta
(24 kHz PCM16 in base64, ~96 KB of JSON) every 1.5 s per connection. In this process, N clients of
one library at a time send an append (100 ms of 16 kHz PCM16 as base64 JSON, ~4.3 KB) every 100 ms
and read every delta (parsed as JSON, as the providers do), for the same wall time. Only this
process's CPU (the clients) is counted; both libraries run back to back in one run, alternately,
so the machine's noise falls on both. Reported: CPU-s per call-minute for each, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time

import aiohttp
import websockets
from websockets.asyncio.client import connect

# As the providers send it: UTF-8 bytes of JSON (gateway/speedups.dumps) in a text frame.
APPEND = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(3200)).decode()}).encode()
DELTA = json.dumps({"type": "response.audio.delta", "response_id": "r", "item_id": "i",
                    "delta": base64.b64encode(bytes(72000)).decode()})


async def serve(port: int) -> None:
    from aiohttp import web

    async def handler(request):
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)

        async def talk():
            while not ws.closed:
                await ws.send_str(DELTA)
                await asyncio.sleep(1.5)
        task = asyncio.create_task(talk())
        async for _ in ws:
            pass
        task.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def client_websockets(url: str, stop: float) -> None:
    async with connect(url, compression=None, max_size=16 * 2**20) as ws:
        async def read():
            async for raw in ws:
                json.loads(raw)
        reader = asyncio.create_task(read())
        while time.monotonic() < stop:
            await ws.send(APPEND, text=True)
            await asyncio.sleep(0.1)
        reader.cancel()


async def client_aiohttp(session: aiohttp.ClientSession, url: str, stop: float) -> None:
    async with session.ws_connect(url, compress=0, max_msg_size=16 * 2**20, heartbeat=20) as ws:
        async def read():
            async for msg in ws:
                json.loads(msg.data)
        reader = asyncio.create_task(read())
        while time.monotonic() < stop:
            await ws.send_frame(APPEND, aiohttp.WSMsgType.TEXT)
            await asyncio.sleep(0.1)
        reader.cancel()


async def run(which: str, url: str, calls: int, seconds: float) -> float:
    """CPU seconds per call-minute of `calls` clients of one library for `seconds`."""
    stop = time.monotonic() + seconds
    cpu0 = time.process_time()
    if which == "websockets":
        await asyncio.gather(*(client_websockets(url, stop) for _ in range(calls)))
    else:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:  # as the app
            await asyncio.gather(*(client_aiohttp(session, url, stop) for _ in range(calls)))
    return (time.process_time() - cpu0) / (calls * seconds / 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"ws://127.0.0.1:{port}/"
        results: dict[str, list[float]] = {"websockets": [], "aiohttp": []}
        for _ in range(args.rounds):
            for which in results:
                results[which].append(asyncio.run(run(which, url, args.calls, args.seconds)))
        ws, ah = (min(v) for v in results.values())
        print(json.dumps({"calls": args.calls, "seconds": args.seconds, "websockets_cpu_s_per_call_min": round(ws, 4),
                          "aiohttp_cpu_s_per_call_min": round(ah, 4), "aiohttp_over_websockets": round(ah / ws, 2),
                          "rounds": {k: [round(x, 4) for x in v] for k, v in results.items()},
                          "websockets": websockets.__version__, "aiohttp": aiohttp.__version__,
                          "load": os.getloadavg()[0]}))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
