"""Run the fake model servers standalone, for a demo or a manual check without real keys.

    .venv/py3.11/bin/python -m tests.fakes [--glm-port 9101] [--openai-port 9102]

Prints the environment to give `scripts/serve` so that GLM and OpenAI personas talk to the fakes.
The fakes answer speech with a tone and greet with a tone; they accept only the keys printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from tests.conftest import GLM_KEY, OPENAI_KEY
from tests.fakes.glm_server import FakeGLM
from tests.fakes.openai_server import FakeOpenAI


async def main(args: argparse.Namespace) -> None:
    glm, openai = FakeGLM(api_key=GLM_KEY), FakeOpenAI(api_key=OPENAI_KEY)
    for fake, port, flag in ((glm, args.glm_port, "--glm-port"), (openai, args.openai_port, "--openai-port")):
        try:
            await fake.start(port=port)
        except OSError as e:  # a port in use (another run of the fakes?) is one line, not a traceback
            await glm.stop()
            why = os.strerror(e.errno).lower() if e.errno else str(e)
            raise SystemExit(f"error: cannot listen on 127.0.0.1:{port}: {why} "
                             f"(choose another with {flag})") from None
    print("fake models running; start the gateway with:\n"
          f"  ZHIPU_API_KEY={GLM_KEY} GLM_REALTIME_URL={glm.url} \\\n"
          f"  OPENAI_API_KEY={OPENAI_KEY} OPENAI_REALTIME_URL='{openai.url}' scripts/serve", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await glm.stop()
        await openai.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__.splitlines()[0])
    p.add_argument("--glm-port", type=int, default=9101)
    p.add_argument("--openai-port", type=int, default=9102)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        pass
