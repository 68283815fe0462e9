"""Just enough of the Chrome DevTools Protocol to drive a real headless Chromium from tests.

The test set-up (scripts/test) installs Debian's `chromium`; `chromium_path()` finds it or says
why not (tests then skip with that reason). One browser per test, a fresh profile, no network
beyond loopback (the flags keep Chromium from calling home, which this machine would refuse).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import aiohttp
import websockets

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1700", "--remote-debugging-port=0"]


def chromium_path() -> str | None:
    return os.environ.get("GATEWAY_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    def __init__(self, ws):
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            await self._dispatch()
        except websockets.ConnectionClosed:
            pass

    async def _dispatch(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self._waiting:
                self._waiting.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(msg["params"]["exceptionDetails"])[:500])
            elif msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(msg["params"]["type"] + ": " + " ".join(str(a.get("value", "")) for a in args))

    async def send(self, method: str, **params):
        msg_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 15)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", 10)

    async def eval(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting in the browser for: {expression}\nconsole: {self.console}")
            await asyncio.sleep(0.1)

    async def text(self, selector: str = "body") -> str:
        return await self.eval(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''")

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


class Browser:
    def __init__(self, proc, profile: str, port: int):
        self.proc, self.profile, self.port = proc, profile, port
        self._drain: asyncio.Task | None = None

    @classmethod
    async def launch(cls, executable: str) -> "Browser":
        profile = tempfile.mkdtemp(prefix="gw-chromium-")
        proc = await asyncio.create_subprocess_exec(executable, *FLAGS, f"--user-data-dir={profile}", "about:blank",
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        lines = []
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError("chromium exited: " + "".join(lines)[-2000:])
            text = line.decode(errors="replace")
            lines.append(text)
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", text)
            if m:
                break
        browser = cls(proc, profile, int(m.group(1)))
        browser._drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling up
        return browser

    async def new_page(self) -> Page:
        async with aiohttp.ClientSession() as s:
            async with s.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as r:
                target = await r.json(content_type=None)
        ws = await websockets.connect(target["webSocketDebuggerUrl"], max_size=None)
        page = Page(ws)
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        return page

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
        shutil.rmtree(self.profile, ignore_errors=True)
