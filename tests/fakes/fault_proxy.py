"""A WebSocket proxy between the gateway and a fake model that injects faults on command.

Modes (per connection, set at any time on the proxy): `drop` aborts both sides without a close
frame; `delay` holds every model->gateway message for `delay_s`; `stall` stops forwarding
model->gateway (the upstream is silent but connected); `corrupt` replaces the next N model
messages with garbage (invalid JSON, truncated JSON, wrong shapes). `faults_at` can schedule a
fault after the k-th message of each connection, which is what the soak uses.
"""

from __future__ import annotations

import asyncio
import random

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

GARBAGE = ["{not json", '{"type": "response.output_audio.delta", "delta": 42}', '["a", "list"]',
           '{"type": "error", "error": "just text"}', '{"type": "response.done", "response": "x"}',
           '{"type": "response.audio.delta", "response_id": "r", "delta": "@@@"}']


class FaultProxy:
    def __init__(self, upstream_url: str, seed: int = 1):
        self.upstream_url = upstream_url
        self.url = ""
        self.mode: str | None = None  # drop | delay | stall | corrupt (applies to live and new connections)
        self.delay_s = 0.3
        self.corrupt_next = 0
        self.plan: dict[int, str] = {}  # message index -> fault, for each new connection
        self.fault_rate = 0.0  # share of new connections that get one random fault (the soak)
        self.injected: dict[str, int] = {"drop": 0, "delay": 0, "stall": 0, "corrupt": 0}
        self.connections = 0
        self._rng = random.Random(seed)
        self._server = None
        self._live: set[ServerConnection] = set()
        self._stall_live: set[ServerConnection] = set()

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)
        port = self._server.sockets[0].getsockname()[1]
        path = self.upstream_url.split("://", 1)[1].split("/", 1)[1]
        self.url = f"ws://127.0.0.1:{port}/{path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def stall_live(self) -> None:
        """The live connections go silent (new ones are fine)."""
        self._stall_live = set(self._live)

    def drop_all(self) -> None:
        """Abort every live connection now (mid-sentence, no close frame)."""
        for ws in list(self._live):
            ws.transport.abort()
            self.injected["drop"] += 1

    async def _handle(self, client: ServerConnection) -> None:
        self.connections += 1
        plan = dict(self.plan)
        if self.fault_rate and self._rng.random() < self.fault_rate:  # the soak: some connections get a fault
            plan[self._rng.randint(5, 150)] = self._rng.choice(["drop", "corrupt", "delay"])
        headers = {k: v for k, v in client.request.headers.raw_items()
                   if k.lower() in ("authorization", "api-key", "x-goog-api-key")}
        # The same path and query as the client asked for (e.g. Qwen's ?model=, Gemini's ?key=).
        origin = "/".join(self.upstream_url.split("/", 3)[:3])
        try:
            upstream = await connect(origin + client.request.path, additional_headers=headers, max_size=None)
        except websockets.InvalidStatus as e:
            await client.close(1011, f"upstream said {e.response.status_code}")
            return
        self._live.add(client)
        stalled = False

        async def down() -> None:  # model -> gateway, where the faults happen
            nonlocal stalled
            n = 0
            async for msg in upstream:
                n += 1
                fault = plan.pop(n, None) or self.mode or ("stall" if client in self._stall_live else None)
                if fault == "drop":
                    self.injected["drop"] += 1
                    client.transport.abort()
                    await upstream.close()
                    return
                if fault == "stall" or stalled:
                    if not stalled:
                        self.injected["stall"] += 1
                    stalled = True
                    continue
                if fault == "delay":
                    self.injected["delay"] += 1
                    await asyncio.sleep(self.delay_s)
                if fault == "corrupt" or self.corrupt_next > 0:
                    self.corrupt_next = max(0, self.corrupt_next - 1)
                    self.injected["corrupt"] += 1
                    msg = self._rng.choice(GARBAGE)
                await client.send(msg)

        async def up() -> None:  # gateway -> model, passed through
            async for msg in client:
                await upstream.send(msg)

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._live.discard(client)
            await upstream.close()
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - already aborted
                pass
